"""The core scenario on the embedded defaults: SQLite and the local-directory object store."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.harness import TERMINAL, Service, make_run, wait_for_state


async def test_core_scenario_on_sqlite_and_local_store(sqlite_service: Service) -> None:
    objects = Path(sqlite_service.env["TASKDEPLOY_DATA_DIR"]) / "objects"
    (objects / "my-bucket" / "in" / "sub").mkdir(parents=True)
    (objects / "my-bucket" / "in" / "sub" / "x.txt").write_bytes(b"local input\n")
    body = make_run(
        "s3://my-bucket/out/",
        input="s3://my-bucket/in/",
        command="cat $INPUT_DIR/sub/x.txt; cp -r $INPUT_DIR/sub $OUTPUT_DIR/; echo e >&2; exit 0",
    )
    async with httpx.AsyncClient(base_url=sqlite_service.base_url, timeout=30) as client:
        resp = await client.post("/v1/runs", json=body)
        assert resp.status_code == 202, resp.text
        run = await wait_for_state(client, resp.json()["id"], TERMINAL)
        assert run["state"] == "succeeded", run
        events = (await client.get(f"/v1/runs/{run['id']}/events")).json()["items"]
        assert [e["to_state"] for e in events] == [
            "queued",
            "preparing",
            "running",
            "finishing",
            "succeeded",
        ]
        assert (await client.get(f"/v1/runs/{run['id']}/logs")).content == b"local input\n"
        out = objects / "my-bucket" / "out" / run["id"]
        assert (out / "stdout.log").read_bytes() == b"local input\n"
        assert (out / "stderr.log").read_bytes() == b"e\n"
        assert (out / "output" / "sub" / "x.txt").read_bytes() == b"local input\n"
        assert (out / "metrics.json").is_file() and (out / "run.json").is_file()
        # Artifacts download from the local store through the API, as the dashboard links them.
        key = f"out/{run['id']}/output/sub/x.txt"
        download = await client.get(f"/v1/runs/{run['id']}/artifacts/{key}")
        assert download.status_code == 200 and download.content == b"local input\n"
        # The dashboard works on the embedded defaults too.
        part = await client.get(f"/ui/parts/runs/{run['id']}")
        assert part.status_code == 286 and "output/sub/x.txt" in part.text  # 286: stop polling
    assert (Path(sqlite_service.env["TASKDEPLOY_DATA_DIR"]) / "taskdeploy.db").is_file()
