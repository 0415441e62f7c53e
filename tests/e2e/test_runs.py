"""One-off runs end to end: real HTTP API, real Docker engine, real S3 (moto), real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.e2e.harness import (
    DEBIAN,
    TERMINAL,
    Service,
    docker_ids,
    get_object,
    keys_under,
    make_run,
    pg_s3_env,
    run_to_end,
    wait_for_state,
)


async def test_issue_example_with_python3_inputs_and_nested_outputs(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    s3_client.put_object(Bucket=bucket, Key="in/data.txt", Body=b"input one\n")
    s3_client.put_object(Bucket=bucket, Key="in/deep/er/blob.bin", Body=bytes(range(256)) * 3)
    body = {
        "command": (
            "python3 -c 'print(56789)' && cp $INPUT_DIR/* $OUTPUT_DIR/ 2>/dev/null; "
            "mkdir -p $OUTPUT_DIR/nested/dir && cp $INPUT_DIR/deep/er/blob.bin $OUTPUT_DIR/nested/dir/ "
            '&& echo to-stderr >&2 && echo "K=$K"'
        ),
        "packages": ["python3"],
        "input": f"s3://{bucket}/in/",
        "output": f"s3://{bucket}/out/",
        "resources": {"cpus": 1, "memory_mb": 256},
        "timeout_seconds": 600,
        "env": {"K": "V"},
    }
    resp = await client.post("/v1/runs", json=body)
    assert resp.status_code == 202, resp.text
    queued = resp.json()
    assert queued["state"] in {"queued", "preparing"}
    assert queued["links"]["self"] == f"/v1/runs/{queued['id']}"
    run = await wait_for_state(client, queued["id"], TERMINAL, 600)
    assert run["state"] == "succeeded", run
    assert run["exit_code"] == 0
    assert run["started_at"] and run["finished_at"]

    events = (await client.get(f"/v1/runs/{run['id']}/events")).json()
    assert [e["to_state"] for e in events["items"]] == [
        "queued",
        "preparing",
        "running",
        "finishing",
        "succeeded",
    ]
    assert events["next_cursor"] is None

    prefix = f"out/{run['id']}/"
    stored = keys_under(s3_client, bucket, prefix)
    assert get_object(s3_client, bucket, prefix + "stdout.log") == b"56789\nK=V\n"
    assert get_object(s3_client, bucket, prefix + "stderr.log") == b"to-stderr\n"
    assert get_object(s3_client, bucket, prefix + "output/data.txt") == b"input one\n"
    assert (
        get_object(s3_client, bucket, prefix + "output/nested/dir/blob.bin")
        == bytes(range(256)) * 3
    )
    assert {prefix + n for n in ("metrics.json", "run.json")} <= set(stored)
    # The API's artifact list matches what is in the bucket.
    listed = {a["key"]: a["size"] for a in run["artifacts"]}
    assert listed == {k: v for k, v in stored.items() if k in listed}
    assert set(stored) - set(listed) <= {prefix + "run.json"}

    manifest = json.loads(get_object(s3_client, bucket, prefix + "run.json"))
    assert manifest["request"]["command"] == body["command"]
    assert manifest["exit_code"] == 0
    assert [s["state"] for s in manifest["states"]][-1] == "succeeded"
    assert manifest["image"]["base"] == DEBIAN
    assert {a["key"] for a in manifest["artifacts"]} >= {prefix + "output/data.txt"}

    metrics = json.loads(get_object(s3_client, bucket, prefix + "metrics.json"))
    assert metrics["summary"]["peak_memory_bytes"] > 0
    assert metrics["summary"]["wall_seconds"] > 0

    logs = await client.get(f"/v1/runs/{run['id']}/logs", params={"stream": "stdout"})
    assert logs.status_code == 200 and logs.content == b"56789\nK=V\n"
    err = await client.get(f"/v1/runs/{run['id']}/logs", params={"stream": "stderr"})
    assert err.content == b"to-stderr\n"
    series = (await client.get(f"/v1/runs/{run['id']}/metrics")).json()
    assert series["summary"]["peak_memory_bytes"] == metrics["summary"]["peak_memory_bytes"]


async def test_nonzero_exit_fails_and_keeps_streams_apart(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    command = "printf 'out-\\342\\234\\223\\n'; printf 'err-\\377\\376' >&2; exit 3"
    run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=command))
    assert run["state"] == "failed" and run["exit_code"] == 3
    assert run["status_reason"] == "exit code 3"
    prefix = f"o/{run['id']}/"
    assert get_object(s3_client, bucket, prefix + "stdout.log") == "out-✓\n".encode()
    assert get_object(s3_client, bucket, prefix + "stderr.log") == b"err-\xff\xfe"
    assert run["logs"]["stderr"] == {"bytes": 6, "kept_bytes": 6, "truncated": False}


async def test_binary_and_unicode_output_files_are_byte_exact(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    command = (
        "printf '\\000\\001\\377binary' > $OUTPUT_DIR/raw.bin; "
        "printf 'h\\303\\251llo' > \"$OUTPUT_DIR/h\\303\\251.txt\"; mkdir -p $OUTPUT_DIR/a/b; "
        "touch $OUTPUT_DIR/a/b/empty"
    )
    run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=command))
    assert run["state"] == "succeeded", run
    prefix = f"o/{run['id']}/output/"
    assert get_object(s3_client, bucket, prefix + "raw.bin") == b"\x00\x01\xffbinary"
    stored = keys_under(s3_client, bucket, prefix)
    assert prefix + "a/b/empty" in stored and stored[prefix + "a/b/empty"] == 0
    names = [k for k in stored if k.endswith(".txt")]
    assert len(names) == 1
    assert get_object(s3_client, bucket, names[0]) == "héllo".encode()


async def test_timeout_kills_and_still_harvests(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    command = "echo started; echo partial > $OUTPUT_DIR/partial.txt; sleep 600"
    run = await run_to_end(
        client, make_run(f"s3://{bucket}/o", command=command, timeout_seconds=2), 60
    )
    assert run["state"] == "timed_out", run
    prefix = f"o/{run['id']}/"
    assert get_object(s3_client, bucket, prefix + "stdout.log") == b"started\n"
    assert get_object(s3_client, bucket, prefix + "output/partial.txt") == b"partial\n"
    assert "time limit" in run["status_reason"]


async def wait_for_file_in_container(run_id: str, path: str, deadline_s: float = 30) -> None:
    """Polls the run's container until the command has written `path`."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ids = docker_ids("ps", "-q", "--filter", f"label=taskdeploy.run_id={run_id}")
        if ids:
            probe = subprocess.run(
                ["docker", "exec", ids[0], "test", "-s", path], capture_output=True, check=False
            )
            if probe.returncode == 0:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} did not appear in the container of run {run_id}")


async def test_cancel_running_kills_and_harvests(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    command = "echo before-cancel; echo kept > $OUTPUT_DIR/kept.txt; sleep 600"
    resp = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/o", command=command))
    run_id = resp.json()["id"]
    await wait_for_state(client, run_id, {"running"})
    await wait_for_file_in_container(run_id, "/workspace/output/kept.txt")
    cancel = await client.post(f"/v1/runs/{run_id}/cancel")
    assert cancel.status_code == 202, cancel.text
    run = await wait_for_state(client, run_id, TERMINAL, 60)
    assert run["state"] == "cancelled"
    prefix = f"o/{run_id}/"
    assert get_object(s3_client, bucket, prefix + "output/kept.txt") == b"kept\n"
    assert get_object(s3_client, bucket, prefix + "stdout.log") == b"before-cancel\n"
    again = await client.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


async def test_cancel_queued_run(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    idle = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_WORKERS_ENABLED": "false"}
    )
    async with httpx.AsyncClient(base_url=idle.base_url, timeout=30) as c:
        resp = await c.post("/v1/runs", json=make_run(f"s3://{bucket}/o"))
        run_id = resp.json()["id"]
        cancelled = await c.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 202
        assert cancelled.json()["state"] == "cancelled"
        events = (await c.get(f"/v1/runs/{run_id}/events")).json()["items"]
        assert [e["to_state"] for e in events] == ["queued", "cancelled"]


async def test_cancel_while_preparing(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    # Remove the environment image for this package set so preparing includes a real build.
    for image in _env_images_with_packages("bc"):
        subprocess.run(["docker", "rmi", "-f", image], check=False, capture_output=True)
    body = make_run(f"s3://{bucket}/o", image=DEBIAN, packages=["bc"], command="echo never")
    resp = await client.post("/v1/runs", json=body)
    run_id = resp.json()["id"]
    await wait_for_state(client, run_id, {"preparing"})
    assert (await client.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
    run = await wait_for_state(client, run_id, TERMINAL, 300)
    assert run["state"] == "cancelled", run
    events = (await client.get(f"/v1/runs/{run_id}/events")).json()["items"]
    assert [e["to_state"] for e in events] == ["queued", "preparing", "cancelled"]
    assert keys_under(s3_client, bucket, f"o/{run_id}/") == {}


def _env_images_with_packages(packages: str) -> list[str]:
    out = subprocess.run(
        [
            "docker",
            "images",
            "-q",
            "--filter",
            "label=taskdeploy.kind=environment",
            "--filter",
            f"label=taskdeploy.packages={packages}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


async def test_out_of_memory_is_failed_with_flag(client: httpx.AsyncClient, bucket: str) -> None:
    command = "x=aaaaaaaa; while :; do x=$x$x; done"
    body = make_run(f"s3://{bucket}/o", command=command, resources={"memory_mb": 32})
    run = await run_to_end(client, body, 120)
    assert run["state"] == "failed", run
    assert run["oom_killed"] is True


async def test_package_install_then_cache_hit(client: httpx.AsyncClient, bucket: str) -> None:
    body = make_run(
        f"s3://{bucket}/o",
        image=DEBIAN,
        packages=["jq"],
        command="echo '{\"a\": 41}' | jq '.a + 1'",
    )
    first = await run_to_end(client, body, 600)
    assert first["state"] == "succeeded", first
    logs = await client.get(f"/v1/runs/{first['id']}/logs")
    assert logs.text == "42\n"
    images_before = _env_images_with_packages("jq")
    second = await run_to_end(client, body, 120)
    assert second["state"] == "succeeded"
    assert second["image_id"] == first["image_id"]
    assert _env_images_with_packages("jq") == images_before
    events = (await client.get(f"/v1/runs/{second['id']}/events")).json()["items"]
    running = next(e for e in events if e["to_state"] == "running")
    assert "cached environment image" in running["detail"]


async def test_failed_package_install_ends_in_error_with_build_log(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    body = make_run(
        f"s3://{bucket}/o", image=DEBIAN, packages=["taskdeploy-no-such-package"], command="true"
    )
    run = await run_to_end(client, body, 600)
    assert run["state"] == "error", run
    assert "build failed" in run["status_reason"]
    build_log = get_object(s3_client, bucket, f"o/{run['id']}/build.log").decode()
    assert "taskdeploy-no-such-package" in build_log
    assert "Unable to locate package" in build_log


async def test_metrics_for_cpu_burner_and_short_command(
    client: httpx.AsyncClient, bucket: str
) -> None:
    burner = "end=$(( $(cut -d. -f1 /proc/uptime) + 3 )); while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do :; done"
    run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=burner), 120)
    assert run["state"] == "succeeded", run
    # What share of a core the burner gets depends on what else the host runs (a busy CI
    # host gave it 48 %): the busiest sample is at least its mean over the run, whatever that
    # share was. tests/integration/test_entrypoint.py samples a burner on a quiet host.
    metrics = run["metrics"]
    assert metrics["cpu_seconds"] > 0.3, metrics
    mean_percent = 100 * metrics["cpu_seconds"] / metrics["wall_seconds"]
    assert metrics["cpu_percent_max"] >= 0.9 * mean_percent, metrics
    series = (await client.get(f"/v1/runs/{run['id']}/metrics")).json()["series"]
    assert len(series) >= 2

    quick = await run_to_end(client, make_run(f"s3://{bucket}/o", command="true"))
    assert quick["state"] == "succeeded"
    assert quick["metrics"]["peak_memory_bytes"] > 0
    assert quick["metrics"]["wall_seconds"] < 5


async def test_empty_input_prefix_gives_empty_input_dir(
    client: httpx.AsyncClient, bucket: str
) -> None:
    body = make_run(
        f"s3://{bucket}/o",
        input=f"s3://{bucket}/nothing-here/",
        command="ls -A $INPUT_DIR | wc -l",
    )
    run = await run_to_end(client, body)
    assert run["state"] == "succeeded", run
    assert (await client.get(f"/v1/runs/{run['id']}/logs")).text.strip() == "0"


async def test_missing_input_bucket_ends_in_error(client: httpx.AsyncClient, bucket: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    body = make_run(f"s3://{bucket}/o", input=f"s3://{missing}/in/")
    run = await run_to_end(client, body)
    assert run["state"] == "error"
    assert missing in run["status_reason"] and "does not exist" in run["status_reason"]


async def test_thousand_input_files(client: httpx.AsyncClient, s3_client: Any, bucket: str) -> None:
    def put(i: int) -> None:
        s3_client.put_object(Bucket=bucket, Key=f"many/d{i % 10}/f{i}.txt", Body=f"{i}\n".encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(1000)))
    command = (
        "find $INPUT_DIR -type f | wc -l; cat $INPUT_DIR/d*/f*.txt | awk '{s+=$1} END {print s}'"
    )
    run = await run_to_end(
        client, make_run(f"s3://{bucket}/o", input=f"s3://{bucket}/many/", command=command)
    )
    assert run["state"] == "succeeded", run
    out = (await client.get(f"/v1/runs/{run['id']}/logs")).text.split()
    assert out == ["1000", str(sum(range(1000)))]


async def test_big_output_file_with_bounded_service_memory(
    pg_service: Service, client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    size = 200 * 1000 * 1000
    warm = await run_to_end(client, make_run(f"s3://{bucket}/o"))
    assert warm["state"] == "succeeded"
    pg_service.reset_peak_rss()
    baseline = pg_service.rss_bytes()
    command = f"head -c {size} /dev/urandom > $OUTPUT_DIR/big.bin; sha256sum $OUTPUT_DIR/big.bin"
    run = await run_to_end(
        client, make_run(f"s3://{bucket}/o", command=command, resources={"memory_mb": 512}), 300
    )
    assert run["state"] == "succeeded", run
    growth = pg_service.peak_rss_bytes() - baseline
    assert growth < 100 * 1024 * 1024, f"service RSS grew by {growth / 2**20:.0f} MiB"
    head = s3_client.head_object(Bucket=bucket, Key=f"o/{run['id']}/output/big.bin")
    assert head["ContentLength"] == size
    digest = (await client.get(f"/v1/runs/{run['id']}/logs")).text.split()[0]
    body = s3_client.get_object(Bucket=bucket, Key=f"o/{run['id']}/output/big.bin")["Body"]
    sha = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        sha.update(chunk)
    assert sha.hexdigest() == digest


async def test_list_runs_filters_and_paginates(client: httpx.AsyncClient, bucket: str) -> None:
    ids = []
    for i in range(3):
        run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=f"exit {i}"))
        ids.append(run["id"])
    page1 = (await client.get("/v1/runs", params={"limit": 2})).json()
    assert len(page1["items"]) == 2 and page1["next_cursor"]
    page2 = (
        await client.get("/v1/runs", params={"limit": 2, "cursor": page1["next_cursor"]})
    ).json()
    seen = [r["id"] for r in page1["items"] + page2["items"]]
    assert len(seen) == len(set(seen))
    assert seen[:3] == list(reversed(ids))  # newest first
    failed = (await client.get("/v1/runs", params={"state": "failed", "limit": 200})).json()
    assert failed["items"] and all(r["state"] == "failed" for r in failed["items"])
    assert ids[1] in {r["id"] for r in failed["items"]}
    assert ids[0] not in {r["id"] for r in failed["items"]}


async def test_request_never_waits_for_docker(client: httpx.AsyncClient, bucket: str) -> None:
    # A package set that needs a build: the POST must still answer before preparing is done.
    body = make_run(f"s3://{bucket}/o", command="true")
    resp = await client.post("/v1/runs", json=body)
    assert resp.status_code == 202
    assert resp.json()["state"] == "queued"
    assert resp.headers["location"] == f"/v1/runs/{resp.json()['id']}"
    await wait_for_state(client, resp.json()["id"], TERMINAL)


async def test_bad_default_base_image_alias(client: httpx.AsyncClient, bucket: str) -> None:
    resp = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/o", image="alpine:3"))
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "image"


async def test_runs_beyond_max_concurrency_wait_in_queued(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    service = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_MAX_CONCURRENT_RUNS": "1"}
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        first = (
            await c.post("/v1/runs", json=make_run(f"s3://{bucket}/o", command="sleep 30"))
        ).json()
        second = (await c.post("/v1/runs", json=make_run(f"s3://{bucket}/o"))).json()
        await wait_for_state(c, first["id"], {"running"})
        assert (await c.get(f"/v1/runs/{second['id']}")).json()["state"] == "queued"
        await c.post(f"/v1/runs/{first['id']}/cancel")
        done = await wait_for_state(c, second["id"], TERMINAL, 60)
        assert done["state"] == "succeeded"


async def test_metrics_are_live_while_the_run_runs(client: httpx.AsyncClient, bucket: str) -> None:
    body = make_run(f"s3://{bucket}/o", command="echo started; sleep 60")
    run_id = (await client.post("/v1/runs", json=body)).json()["id"]
    await wait_for_state(client, run_id, {"running"})
    deadline = time.monotonic() + 30
    live: dict[str, Any] = {}
    while time.monotonic() < deadline:  # samples come once a second: poll until two exist
        response = await client.get(f"/v1/runs/{run_id}/metrics")
        assert response.status_code == 200, response.text
        live = response.json()
        if len(live["series"]) >= 2:
            break
        await asyncio.sleep(0.2)
    assert live["live"] is True and len(live["series"]) >= 2, live
    assert live["summary"]["peak_memory_bytes"] > 0
    await client.post(f"/v1/runs/{run_id}/cancel")
    await wait_for_state(client, run_id, TERMINAL)
    stored = (await client.get(f"/v1/runs/{run_id}/metrics")).json()
    assert stored["live"] is False and len(stored["series"]) >= len(live["series"])


async def test_artifact_downloads_are_limited_to_the_runs_artifacts(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    s3_client.put_object(Bucket=bucket, Key="o/secret.txt", Body=b"not an artifact")
    command = (
        "printf abc > $OUTPUT_DIR/a.txt; mkdir -p $OUTPUT_DIR/d; "
        "head -c 3000000 /dev/urandom > $OUTPUT_DIR/d/big.bin"
    )
    run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=command))
    assert run["state"] == "succeeded", run
    keys = {a["key"] for a in run["artifacts"]}
    assert {f"o/{run['id']}/output/a.txt", f"o/{run['id']}/output/d/big.bin"} <= keys
    for key in keys:
        response = await client.get(f"/v1/runs/{run['id']}/artifacts/{key}")
        assert response.status_code == 200, (key, response.text)
        assert response.content == get_object(s3_client, bucket, key)
    response = await client.get(f"/v1/runs/{run['id']}/artifacts/o/{run['id']}/output/a.txt")
    assert response.headers["content-disposition"] == "attachment; filename*=UTF-8''a.txt"
    assert response.headers["content-type"] == "application/octet-stream"
    for other in ("o/secret.txt", f"o/{run['id']}/output/../../secret.txt", "a.txt"):
        refused = await client.get(f"/v1/runs/{run['id']}/artifacts/{other}")
        assert refused.status_code == 404, other
        assert refused.json()["error"]["code"] == "not_found"


async def test_request_bodies_are_capped(client: httpx.AsyncClient, bucket: str) -> None:
    huge = make_run(f"s3://{bucket}/o", command="echo " + "x" * (5 * 1024 * 1024))
    response = await client.post("/v1/runs", json=huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert (await client.get("/healthz")).status_code == 200
