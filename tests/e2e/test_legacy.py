"""The replaced service's endpoints: its users' scripts keep working unchanged."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import TERMINAL, containers_gone, make_run, wait_for_state


def old_body(bucket: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": "u1",
        "task_id": f"task-{uuid.uuid4().hex[:6]}",
        "task_name": "report",
        "exec_id": "exec-1",
        "s3_bucket": bucket,
        "source_s3_prefix": "src",
        "command": "cat $INPUT_DIR/in.txt; cp $INPUT_DIR/in.txt $OUTPUT_DIR/copy.txt",
        "linux_dependencies": "",
        "cron_expression": "0 3 * * *",
    }
    body.update(overrides)
    return body


async def test_deploy_runs_now_with_the_old_layout(
    pg_service: Any, s3_client: Any, bucket: str
) -> None:
    s3_client.put_object(Bucket=bucket, Key="src/in.txt", Body=b"legacy input\n")
    body = old_body(bucket)
    async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=30) as client:
        resp = await client.post("/deploy", json=body)
        assert resp.status_code == 202, resp.text
        answer = resp.json()
        assert answer["message"] == "success" and answer["run_id"]
        run = await wait_for_state(client, answer["run_id"], TERMINAL, 300)
    assert run["state"] == "succeeded", run
    prefix = f"{body['task_id']}/exec-1/output/"
    read = lambda key: s3_client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()  # noqa: E731
    assert read("stdout.txt") == b"legacy input\n"
    assert read("copy.txt") == b"legacy input\n"
    assert read("metrics.json")


async def test_readme_style_body_with_unique_id_is_idempotent(
    pg_service: Any, s3_client: Any, bucket: str
) -> None:
    body = {
        "userId": "u2",
        "uniqueId": f"uid-{uuid.uuid4().hex[:8]}",
        "s3_bucket": bucket,
        "source_s3_prefix": "",
        "destination_s3_prefix": "results/x",
        "command": "echo readme-style",
        "linux_dependencies": [],
    }
    async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=30) as client:
        first = await client.post("/deploy", json=body)
        again = await client.post("/deploy", json=body)
        assert (first.status_code, again.status_code) == (202, 200)
        assert first.json()["run_id"] == again.json()["run_id"]
        run = await wait_for_state(client, first.json()["run_id"], TERMINAL, 300)
    assert run["state"] == "succeeded", run
    stdout = s3_client.get_object(Bucket=bucket, Key="results/x/stdout.txt")["Body"].read()
    assert stdout == b"readme-style\n"


async def test_errors_use_the_old_shape_with_a_4xx(pg_service: Any, bucket: str) -> None:
    async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=30) as client:
        missing = await client.post("/deploy", json={"s3_bucket": bucket})
        assert missing.status_code == 422
        assert missing.json()["message"] == "error"
        assert any(d["field"] == "command" for d in missing.json()["detail"])
        bad_package = await client.post(
            "/deploy", json=old_body(bucket, linux_dependencies="jq; rm -rf /")
        )
        assert bad_package.status_code == 422 and bad_package.json()["message"] == "error"
        no_cron = await client.post("/submit_task", json=old_body(bucket, cron_expression=None))
        assert no_cron.status_code == 422


async def test_submit_task_creates_a_schedule(pg_service: Any, bucket: str) -> None:
    async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=30) as client:
        resp = await client.post("/submit_task", json=old_body(bucket))
        assert resp.status_code == 201, resp.text
        schedule_id = resp.json()["schedule_id"]
        schedule = (await client.get(f"/v1/schedules/{schedule_id}")).json()
        assert schedule["cron"] == "0 3 * * *" and schedule["name"] == "report"
        await client.post(f"/v1/schedules/{schedule_id}/pause")
        spec = (await client.get("/openapi.json")).json()
    assert spec["paths"]["/deploy"]["post"]["deprecated"] is True
    assert spec["paths"]["/submit_task"]["post"]["deprecated"] is True


# ------------------------------------------------------------------ hostile legacy bodies
BAD_PATH_PARTS = [
    ("destination_s3_prefix", "/absolute/results", "starts with '/'"),
    ("destination_s3_prefix", "a/../b", "'..' segment"),
    ("destination_s3_prefix", "a/./b", "'.' segment"),
    ("destination_s3_prefix", "a//b", "empty segment"),
    ("destination_s3_prefix", "a/\x01b", "control characters"),
    ("destination_s3_prefix", "results\n/x", "control characters"),
    ("destination_s3_prefix", "é" * 451, "longer than 900 bytes"),
    ("task_id", "..", "'..' segment"),
    ("task_id", "t/../../other", "'..' segment"),
    ("task_id", "/etc", "starts with '/'"),
    ("task_id", "t/", "empty segment"),
    ("task_id", "tab\there", "control characters"),
    ("exec_id", ".", "'.' segment"),
    ("exec_id", "e/../../x", "'..' segment"),
    ("exec_id", "e\x7f", "control characters"),
]


@pytest.mark.parametrize("endpoint", ["/deploy", "/submit_task"])
async def test_path_fields_follow_the_s3_prefix_rules(
    pg_service: Any, bucket: str, endpoint: str
) -> None:
    async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=30) as client:
        before = (await client.get("/v1/runs", params={"limit": 100})).json()["items"]
        for field, value, words in BAD_PATH_PARTS:
            answer = await client.post(endpoint, json=old_body(bucket, **{field: value}))
            assert answer.status_code == 422, (field, value, answer.text)
            body = answer.json()
            assert body["message"] == "error"
            assert [d["field"] for d in body["detail"]] == [field], body
            assert words in body["detail"][0]["message"], body
        # Too long only together: the prefix as a whole is capped too.
        long_ids = old_body(bucket, task_id="\U0001f600" * 200, exec_id="\U0001f600" * 200)
        assert (await client.post(endpoint, json=long_ids)).status_code == 422
        after = (await client.get("/v1/runs", params={"limit": 100})).json()["items"]
    assert [r["id"] for r in after] == [r["id"] for r in before]


async def test_outputs_cannot_replace_the_services_own_files(
    pg_service: Any, s3_client: Any, bucket: str
) -> None:
    forge = (
        "echo real stdout; echo real stderr >&2; "
        "for f in stdout.txt stderr.txt metrics.json run.json; do echo forged > $OUTPUT_DIR/$f; "
        "done; echo mine > $OUTPUT_DIR/copy.txt"
    )
    body = old_body(bucket, command=forge, source_s3_prefix="")
    async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=30) as client:
        resp = await client.post("/deploy", json=body)
        assert resp.status_code == 202, resp.text
        run = await wait_for_state(client, resp.json()["run_id"], TERMINAL, 300)
    assert run["state"] == "succeeded", run
    assert "4 output entries were not uploaded" in run["status_reason"]
    prefix = f"{body['task_id']}/exec-1/output/"
    read = lambda key: s3_client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()  # noqa: E731
    assert read("stdout.txt") == b"real stdout\n"
    assert read("stderr.txt") == b"real stderr\n"
    assert read("copy.txt") == b"mine\n"
    assert json.loads(read("metrics.json"))["run_id"] == run["id"]
    manifest = json.loads(read("run.json"))
    assert manifest["run_id"] == run["id"]
    skipped = {s["path"]: s["reason"] for s in manifest["skipped_outputs"]}
    assert set(skipped) == {"stdout.txt", "stderr.txt", "metrics.json", "run.json"}
    assert all("service's own files" in reason for reason in skipped.values())
    keys = [a["key"] for a in run["artifacts"]]
    assert len(keys) == len(set(keys)), keys  # each key once: no output wrote over another


async def test_a_result_prefix_belongs_to_one_run(pg_service: Any, bucket: str) -> None:
    def readme_body(destination: str, command: str = "echo one", **more: Any) -> dict[str, Any]:
        return {
            "s3_bucket": bucket,
            "destination_s3_prefix": destination,
            "command": command,
            **more,
        }

    def conflict(answer: httpx.Response, field: str) -> str:
        assert answer.status_code == 409, answer.text
        body = answer.json()
        assert body["message"] == "error" and body["detail"].startswith(f"{field}: "), body
        return str(body["detail"])

    created: list[str] = []
    async with httpx.AsyncClient(base_url=pg_service.base_url, timeout=30) as client:

        async def deploy(body: dict[str, Any]) -> httpx.Response:
            answer = await client.post("/deploy", json=body)
            if answer.status_code == 202:
                created.append(answer.json()["run_id"])
            return answer

        first = await deploy(readme_body("shared/x"))
        assert first.status_code == 202, first.text
        owner_run = first.json()["run_id"]
        detail = conflict(
            await deploy(readme_body("shared/x/", "echo two")), "destination_s3_prefix"
        )
        assert owner_run in detail  # the same owner is told which run holds it
        conflict(await deploy(readme_body("shared/x/inner")), "destination_s3_prefix")
        conflict(await deploy(readme_body("shared")), "destination_s3_prefix")
        assert (await deploy(readme_body("shared/y"))).status_code == 202

        # An idempotent replay is the same run; another uniqueId at the prefix is not.
        key = f"uid-{uuid.uuid4().hex[:8]}"
        replayed = readme_body("keyed/z", uniqueId=key)
        made = await deploy(replayed)
        again = await client.post("/deploy", json=replayed)
        assert (made.status_code, again.status_code) == (202, 200)
        assert made.json()["run_id"] == again.json()["run_id"]
        conflict(await deploy({**replayed, "uniqueId": key + "-2"}), "destination_s3_prefix")

        # The old body without uniqueId: the second run of one task/exec would overwrite.
        task = old_body(bucket, source_s3_prefix="", command="echo task")
        assert (await deploy(task)).status_code == 202
        conflict(await deploy(task), "task_id/exec_id")

        # Never inside, or around, a usual run's folder <output prefix><run id>/.
        usual = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/usual/"))
        assert usual.status_code == 202, usual.text
        usual_id = usual.json()["id"]
        created.append(usual_id)
        for destination in (f"usual/{usual_id}", f"usual/{usual_id}/output/x", "usual"):
            conflict(await deploy(readme_body(destination)), "destination_s3_prefix")
        assert (await deploy(readme_body(f"usual-not/{usual_id}"))).status_code == 202

        # Concurrent requests for one prefix, or nested ones: exactly one wins.
        for destinations in (["race/z"] * 4, ["nest/", "nest/a", "nest/a/b", "nest/a/b/c"]):
            answers = await asyncio.gather(
                *(deploy(readme_body(d, f"echo {i}")) for i, d in enumerate(destinations))
            )
            codes = sorted(a.status_code for a in answers)
            assert codes == [202] + [409] * (len(destinations) - 1), [a.text for a in answers]

        for run_id in created:
            await wait_for_state(client, run_id, TERMINAL, 300)
    await containers_removed(created)


async def containers_removed(run_ids: list[str], deadline_s: float = 60) -> None:
    """Waits until the containers of `run_ids` are gone (removed just after each run ends)."""
    for run_id in run_ids:
        await containers_gone(run_id, deadline_s)
