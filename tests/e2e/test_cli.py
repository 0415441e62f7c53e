"""The `taskdeploy` command line as a user runs it, against the real service: run and follow,
the runs and schedules commands, --json for scripts, API errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from tests.e2e.harness import BUSYBOX, REPO, TERMINAL, Service, create_database, pg_s3_env


def taskdeploy(
    service: Service | None, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """`python -m app.cli ARGS` with TASKDEPLOY_URL pointing at `service`; bytes, not text, so
    that logs can be compared byte for byte."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKDEPLOY_")}
    if service is not None:
        base["TASKDEPLOY_URL"] = service.base_url
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        timeout=timeout,
    )


def ok_json(done: subprocess.CompletedProcess[bytes]) -> Any:
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def wait_for_run(
    service: Service, run_id: str, states: set[str], deadline_s: float = 120
) -> dict[str, Any]:
    """Polls `runs show ID --json` until the run is in one of `states`."""
    deadline = time.monotonic() + deadline_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = ok_json(taskdeploy(service, "runs", "show", run_id, "--json"))
        if last["state"] in states:
            return last
        if last["state"] in TERMINAL:
            raise AssertionError(f"run ended {last['state']} while waiting for {states}: {last}")
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} not in {states} after {deadline_s} s: {last}")


def run_args(bucket: str, *command: str, options: tuple[str, ...] = ()) -> list[str]:
    """`run` of a busybox command writing to s3://BUCKET/o/, with extra options before `--`."""
    return ["run", "--image", BUSYBOX, "--output", f"s3://{bucket}/o/", *options, "--", *command]


def test_run_follows_prints_the_logs_and_exits_with_the_command_code(
    pg_service: Service, bucket: str, s3_client: Any
) -> None:
    done = taskdeploy(pg_service, *run_args(bucket, "sh", "-c", "echo hi; echo err >&2; exit 3"))
    assert done.returncode == 3, done.stderr.decode()
    assert done.stdout == b"hi\n"
    stderr = done.stderr.decode()
    assert "err\n" in stderr and "failed" in stderr
    # Every artifact is listed with its full location, and is really there.
    listed = [word for word in stderr.split() if word.startswith(f"s3://{bucket}/o/")]
    assert any(uri.endswith("/stdout.log") for uri in listed), stderr
    for uri in listed:
        s3_client.head_object(Bucket=bucket, Key=uri.removeprefix(f"s3://{bucket}/"))

    # Several words are joined with shell quoting; output without a final newline stays so.
    quoted = taskdeploy(pg_service, *run_args(bucket, "printf", "%s|", "a b", "c'd"))
    assert quoted.returncode == 0, quoted.stderr.decode()
    assert quoted.stdout == b"a b|c'd|"

    success = taskdeploy(pg_service, *run_args(bucket, "true"))
    assert success.returncode == 0, success.stderr.decode()
    assert success.stdout == b""


def test_no_follow_then_runs_show_logs_and_list(pg_service: Service, bucket: str) -> None:
    command = "echo hello-cli; echo oops >&2"
    done = taskdeploy(pg_service, *run_args(bucket, command, options=("--no-follow",)))
    assert done.returncode == 0, done.stderr.decode()
    run_id = done.stdout.decode().strip()
    assert str(uuid.UUID(run_id)) == run_id

    finished = wait_for_run(pg_service, run_id, TERMINAL)
    assert finished["state"] == "succeeded" and finished["exit_code"] == 0
    assert finished["command"] == command  # one word goes as-is

    logs = taskdeploy(pg_service, "runs", "logs", run_id)
    assert (logs.returncode, logs.stdout) == (0, b"hello-cli\n"), logs.stderr.decode()
    errors = taskdeploy(pg_service, "runs", "logs", run_id, "--stream", "stderr")
    assert (errors.returncode, errors.stdout) == (0, b"oops\n"), errors.stderr.decode()

    page = ok_json(taskdeploy(pg_service, "runs", "list", "--json", "--limit", "200"))
    assert run_id in {item["id"] for item in page["items"]}
    succeeded = ok_json(taskdeploy(pg_service, "runs", "list", "--state", "succeeded", "--json"))
    assert succeeded["items"] and {item["state"] for item in succeeded["items"]} == {"succeeded"}

    shown = taskdeploy(pg_service, "runs", "show", run_id, env={"COLUMNS": "200"})
    assert shown.returncode == 0 and run_id in shown.stdout.decode()
    assert "succeeded" in shown.stdout.decode() and "stdout.log" in shown.stdout.decode()
    listed = taskdeploy(pg_service, "runs", "list", env={"COLUMNS": "200"})
    assert listed.returncode == 0 and run_id in listed.stdout.decode()


def test_runs_cancel_stops_a_running_run(pg_service: Service, bucket: str) -> None:
    done = taskdeploy(pg_service, *run_args(bucket, "sleep 30", options=("--no-follow",)))
    assert done.returncode == 0, done.stderr.decode()
    run_id = done.stdout.decode().strip()
    wait_for_run(pg_service, run_id, {"running"}, deadline_s=60)

    cancelled = taskdeploy(pg_service, "runs", "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr.decode()
    assert run_id in cancelled.stdout.decode()
    final = wait_for_run(pg_service, run_id, {"cancelled"}, deadline_s=30)
    assert final["finished_at"] is not None

    again = taskdeploy(pg_service, "runs", "cancel", run_id)
    assert again.returncode == 2 and "can no longer be cancelled" in again.stderr.decode()


def test_schedules_create_list_pause_resume_trigger(pg_service: Service, bucket: str) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = ok_json(
        taskdeploy(
            pg_service,
            "schedules", "create", "--name", name, "--cron", "30 2 * * *",
            "--timezone", "America/New_York", "--output", f"s3://{bucket}/sched/",
            "--image", BUSYBOX, "--concurrency-policy", "forbid", "--json",
            "--", "echo", "from the schedule",
        )
    )  # fmt: skip
    schedule_id = created["id"]
    assert created["name"] == name and created["cron"] == "30 2 * * *"
    assert created["timezone"] == "America/New_York"
    assert created["concurrency_policy"] == "forbid"
    assert created["run"]["command"] == "echo 'from the schedule'"
    assert len(created["next_fire_times"]) == 5 and not created["paused"]

    page = ok_json(taskdeploy(pg_service, "schedules", "list", "--json"))
    assert schedule_id in {item["id"] for item in page["items"]}
    table = taskdeploy(pg_service, "schedules", "list", env={"COLUMNS": "200"})
    assert table.returncode == 0 and name in table.stdout.decode()

    paused = ok_json(taskdeploy(pg_service, "schedules", "pause", schedule_id, "--json"))
    assert paused["paused"] and paused["next_fire_at"] is None
    resumed = ok_json(taskdeploy(pg_service, "schedules", "resume", schedule_id, "--json"))
    assert not resumed["paused"] and resumed["next_fire_at"] is not None

    triggered = ok_json(taskdeploy(pg_service, "schedules", "trigger", schedule_id, "--json"))
    assert triggered["schedule_id"] == schedule_id
    finished = wait_for_run(pg_service, triggered["id"], TERMINAL)
    assert finished["state"] == "succeeded"

    followed = taskdeploy(pg_service, "schedules", "trigger", schedule_id, "--follow")
    assert followed.returncode == 0, followed.stderr.decode()
    assert followed.stdout == b"from the schedule\n"


def test_errors_exit_2_for_refused_requests_and_3_for_an_unreachable_server(
    pg_service: Service, bucket: str
) -> None:
    bad_output = taskdeploy(pg_service, "run", "--output", "notanuri", "--", "true")
    assert bad_output.returncode == 2
    assert bad_output.stderr.decode().startswith("taskdeploy: ")
    assert "output" in bad_output.stderr.decode()

    missing = taskdeploy(pg_service, "runs", "show", str(uuid.uuid4()))
    assert missing.returncode == 2 and "taskdeploy: " in missing.stderr.decode()

    bad_env = taskdeploy(pg_service, *run_args(bucket, "true", options=("--env", "NOEQUALS")))
    assert bad_env.returncode == 2 and "NAME=VALUE" in bad_env.stderr.decode()
    no_command = taskdeploy(pg_service, "run", "--output", f"s3://{bucket}/o/")
    assert no_command.returncode == 2

    nowhere = ("--url", "http://127.0.0.1:9")
    for args in (["runs", "list", *nowhere], run_args(bucket, "true", options=nowhere)):
        unreachable = taskdeploy(None, *args)
        assert unreachable.returncode == 3, unreachable.stderr.decode()
        assert "cannot reach http://127.0.0.1:9" in unreachable.stderr.decode()


@pytest.fixture(scope="module")
async def keyed_service(module_services: Any, postgres_url: str, s3_endpoint: str) -> Service:
    """A service of its own: creating a key turns authentication on for every caller."""
    database = await create_database(postgres_url)
    return module_services(pg_s3_env(database, s3_endpoint))  # type: ignore[no-any-return]


def test_token_from_the_environment_or_the_option(keyed_service: Service) -> None:
    created = taskdeploy(None, "keys", "create", "--owner", "carol", env=keyed_service.env)
    assert created.returncode == 0, created.stderr.decode()
    token = created.stdout.decode().strip()

    refused = taskdeploy(keyed_service, "runs", "list", "--json")
    assert refused.returncode == 2 and "TASKDEPLOY_TOKEN" in refused.stderr.decode()
    assert ok_json(
        taskdeploy(keyed_service, "runs", "list", "--json", env={"TASKDEPLOY_TOKEN": token})
    ) == {"items": [], "next_cursor": None}
    assert (
        ok_json(taskdeploy(keyed_service, "schedules", "list", "--json", "--token", token))["items"]
        == []
    )
    wrong = taskdeploy(keyed_service, "runs", "list", env={"TASKDEPLOY_TOKEN": "td_wrong"})
    assert wrong.returncode == 2
    assert token not in (wrong.stdout + wrong.stderr).decode()
