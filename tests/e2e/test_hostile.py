"""Hostile inputs end to end: fork, memory, log and output bombs, links and special files, unsafe
input keys, command text that looks like code, the container's confinement and the network switch.

Each test asserts what the user of the API would see: states, reasons, bytes in the bucket.
A command's NUL byte (a 422) is covered by test_validation.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    DEBIAN,
    TERMINAL,
    Service,
    containers_gone,
    create_database,
    docker_ids,
    get_object,
    keys_under,
    make_run,
    pg_s3_env,
    run_to_end,
    wait_for_state,
)

MiB = 1024 * 1024


def manifest_of(s3: Any, bucket: str, run: dict[str, Any]) -> Any:
    """The run.json of a run whose output is s3://BUCKET/o."""
    return json.loads(get_object(s3, bucket, f"o/{run['id']}/run.json"))


def dedicated_service(
    service_factory: Any, database: str, s3_endpoint: str, settings: dict[str, str]
) -> Service:
    """A service on PostgreSQL and the suite's S3 with its own operator settings."""
    return service_factory({**pg_s3_env(database, s3_endpoint), **settings})  # type: ignore[no-any-return]


@asynccontextmanager
async def client_for(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        yield c


async def container_pids(run_id: str) -> int | None:
    """How many processes the run's container holds right now (None when it is not running)."""
    ids = await asyncio.to_thread(
        docker_ids, "ps", "-q", "--filter", f"label=taskdeploy.run_id={run_id}"
    )
    if not ids:
        return None
    out = await asyncio.to_thread(
        subprocess.run,
        ["docker", "stats", "--no-stream", "--format", "{{.PIDs}}", ids[0]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    text = out.stdout.strip()
    return int(text) if out.returncode == 0 and text.isdigit() else None


# --------------------------------------------------------------------------- 1. fork bomb
@pytest.mark.serial  # asserts latency (or free space): not beside other tests
async def test_fork_bomb_is_held_at_the_pids_limit_and_the_api_stays_responsive(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    service = dedicated_service(
        service_factory, pg_database, s3_endpoint, {"TASKDEPLOY_PIDS_LIMIT": "64"}
    )
    # POSIX sh (busybox ash has no `:(){ :|:& };:`). A shell dies when it cannot fork, so the
    # recursive bomb alone burns out within a second once the init reaps it; awk's system()
    # survives failed forks and keeps every free slot filled with sleeps until the time limit.
    # The bomb waits until awk has run its first command: a bomb that filled the slots before
    # awk could fork at all would burn out in a second (seen once in a clean-clone run).
    bomb = (
        'awk \'BEGIN { system("touch /tmp/awk-up"); while (1) system("sleep 30 &") }\' & '
        "until [ -e /tmp/awk-up ]; do :; done; f() { f & f & }; f; wait"
    )
    body = make_run(f"s3://{bucket}/o", command=bomb, timeout_seconds=10)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as c:
        resp = await c.post("/v1/runs", json=body)
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["id"]
        await wait_for_state(c, run_id, {"running"}, 60)

        pids: list[int] = []
        sampling = True

        async def sample_pids() -> None:
            while sampling:
                count = await container_pids(run_id)
                if count:
                    pids.append(count)
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample_pids())
        health_s: list[float] = []
        run_s: list[float] = []
        polls_while_running = 0
        run: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                health = await c.get("/healthz")
                health_s.append(time.monotonic() - started)
                assert health.status_code == 200
                started = time.monotonic()
                got = await c.get(f"/v1/runs/{run_id}")
                run_s.append(time.monotonic() - started)
                assert got.status_code == 200
                run = got.json()
                if run["state"] in TERMINAL:
                    break
                if run["state"] == "running":
                    polls_while_running += 1
                await asyncio.sleep(0.25)
        finally:
            sampling = False
            await sampler

        assert run["state"] in {"failed", "timed_out"}, run
        if run["state"] == "timed_out":
            assert "time limit" in run["status_reason"]
        assert polls_while_running >= 5, (
            f"only {polls_while_running} polls while it ran: {run}, pids {pids}"
        )
        assert max(health_s) < 1.0, f"/healthz took up to {max(health_s):.2f} s: {health_s}"
        assert max(run_s) < 1.0, f"GET /v1/runs/{{id}} took up to {max(run_s):.2f} s: {run_s}"
        # The bomb really ran into the limit, and never past it.
        assert pids, "no process count was read while the bomb ran"
        assert max(pids) <= 64, pids
        assert max(pids) >= 48, f"the bomb never came near the limit: {pids}"

        # The container, bomb and all, is gone, and the service still runs an ordinary job.
        await containers_gone(run_id)
        after = await run_to_end(c, make_run(f"s3://{bucket}/o", command="echo still-here"))
        assert after["state"] == "succeeded", after
        assert (await c.get(f"/v1/runs/{after['id']}/logs")).content == b"still-here\n"


# --------------------------------------------------------------------------- 2. memory bomb
async def test_memory_bomb_is_oom_killed_and_the_next_run_succeeds(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    bomb = "echo before; awk 'BEGIN { s = \"x\"; while (1) s = s s }'; echo after-awk-$?"
    body = make_run(f"s3://{bucket}/o", command=bomb, resources={"cpus": 1, "memory_mb": 32})
    run = await run_to_end(client, body, 120)
    # The kernel killed awk (137) and the command went on to exit 0: the OOM flag decides.
    assert run["state"] == "failed", run
    assert run["oom_killed"] is True
    assert "out of memory" in run["status_reason"]
    stdout = get_object(s3_client, bucket, f"o/{run['id']}/stdout.log")
    assert stdout == b"before\nafter-awk-137\n", stdout

    normal = await run_to_end(client, make_run(f"s3://{bucket}/o", command="echo fine"))
    assert normal["state"] == "succeeded", normal
    assert normal["oom_killed"] is False
    assert get_object(s3_client, bucket, f"o/{normal['id']}/stdout.log") == b"fine\n"


# --------------------------------------------------------------------------- 3. log bomb
async def test_two_gigabytes_of_stdout_keep_one_mebibyte_and_bounded_service_memory(
    service_factory: Any, pg_database: str, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    # Debian's head and wc move 2 GB in about 3 s; busybox's take over 30 s on this machine.
    service = dedicated_service(
        service_factory, pg_database, s3_endpoint, {"TASKDEPLOY_LOG_LIMIT_BYTES": str(MiB)}
    )
    total = 2_000_000_000
    async with client_for(service) as c:
        warm = await run_to_end(c, make_run(f"s3://{bucket}/o", image=DEBIAN), 300)
        assert warm["state"] == "succeeded", warm
        service.reset_peak_rss()
        baseline = service.rss_bytes()
        body = make_run(
            f"s3://{bucket}/o",
            image=DEBIAN,
            command=f"head -c {total} /dev/zero; echo done >&2",
            timeout_seconds=120,
        )
        run = await run_to_end(c, body, 150)
        growth = service.peak_rss_bytes() - baseline
        assert run["state"] == "succeeded", run
        assert run["logs"]["stdout"] == {"bytes": total, "kept_bytes": MiB, "truncated": True}
        assert run["logs"]["stderr"] == {"bytes": 5, "kept_bytes": 5, "truncated": False}
        stored = get_object(s3_client, bucket, f"o/{run['id']}/stdout.log")
        marker = f"\n[taskdeploy: stdout truncated: kept the first {MiB} of {total} bytes]\n"
        assert len(stored) == MiB + len(marker)
        assert stored[:MiB] == b"\0" * MiB
        assert stored[MiB:] == marker.encode()
        via_api = await c.get(f"/v1/runs/{run['id']}/logs", params={"stream": "stdout"})
        assert via_api.status_code == 200 and via_api.content == stored
        assert growth < 100 * MiB, f"service RSS grew by {growth / MiB:.0f} MiB"
    # Not checked: the size of the container's Docker log. The wrapper captures the streams
    # inside the container, and the container is gone (removed) by the time the run ends.


# --------------------------------------------------------------------------- 4. output bombs
OUTPUT_CAPS = {"TASKDEPLOY_MAX_OUTPUT_FILES": "200", "TASKDEPLOY_MAX_OUTPUT_BYTES": "20000000"}


@pytest.fixture(scope="module")
async def capped_service(
    module_services: Any, postgres_url: str, s3_endpoint: str, created_databases: list[str]
) -> Service:
    database = await create_database(postgres_url)
    created_databases.append(database)
    return dedicated_service(module_services, database, s3_endpoint, OUTPUT_CAPS)


async def test_thousand_output_files_upload_the_first_two_hundred_and_list_the_rest(
    capped_service: Service, s3_client: Any, bucket: str
) -> None:
    command = 'i=0; while [ $i -lt 1000 ]; do echo "$i" > "$OUTPUT_DIR/f$i"; i=$((i + 1)); done'
    async with client_for(capped_service) as c:
        run = await run_to_end(c, make_run(f"s3://{bucket}/o", command=command), 120)
    # The command succeeded; the cap is reported, not turned into a failure.
    assert run["state"] == "succeeded", run
    assert "output file cap" in run["status_reason"] and "200" in run["status_reason"]
    assert "800 output entries were not uploaded" in run["status_reason"]
    prefix = f"o/{run['id']}/output/"
    uploaded = keys_under(s3_client, bucket, prefix)
    assert len(uploaded) == 200
    for key, size in uploaded.items():
        name = key.removeprefix(prefix)
        assert size == len(name), key  # "f123" holds "123\n"
    some = sorted(uploaded)[0]
    assert get_object(s3_client, bucket, some) == some.removeprefix(prefix + "f").encode() + b"\n"

    manifest = manifest_of(s3_client, bucket, run)
    assert manifest["skipped_outputs_count"] == 800
    skipped = {s["path"] for s in manifest["skipped_outputs"]}
    assert len(skipped) == 800
    assert all(
        s["kind"] == "regular" and s["reason"] == "over the output caps"
        for s in manifest["skipped_outputs"]
    )
    names = {k.removeprefix(prefix) for k in uploaded}
    assert names | skipped == {f"f{i}" for i in range(1000)}
    assert not names & skipped


@pytest.fixture(scope="module")
async def hundred_megabyte_run(capped_service: Service, s3_client: Any) -> dict[str, Any]:
    """One run writing ten 10 MB files against the 20 MB cap, and what it left in the bucket."""
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=bucket)
    command = (
        'for i in 0 1 2 3 4 5 6 7 8 9; do head -c 10000000 /dev/urandom > "$OUTPUT_DIR/big$i"; '
        "done; echo written"
    )
    body = make_run(f"s3://{bucket}/o", command=command, resources={"cpus": 1, "memory_mb": 256})
    async with client_for(capped_service) as c:
        run = await run_to_end(c, body, 180)
    prefix = f"o/{run['id']}/output/"
    return {
        "run": run,
        "uploaded": {
            k.removeprefix(prefix): v for k, v in keys_under(s3_client, bucket, prefix).items()
        },
        "manifest": manifest_of(s3_client, bucket, run),
    }


async def test_hundred_megabytes_of_outputs_upload_at_most_the_byte_cap(
    hundred_megabyte_run: dict[str, Any],
) -> None:
    run, uploaded = hundred_megabyte_run["run"], hundred_megabyte_run["uploaded"]
    assert run["state"] == "succeeded", run
    assert "output size cap" in run["status_reason"], run["status_reason"]
    assert sum(uploaded.values()) <= 20_000_000, uploaded
    assert uploaded, "nothing was uploaded at all"
    # Whole files only: none is cut off at the cap.
    assert set(uploaded.values()) == {10_000_000}, uploaded
    assert set(uploaded) <= {f"big{i}" for i in range(10)}


async def test_every_output_left_out_by_the_byte_cap_is_reported(
    hundred_megabyte_run: dict[str, Any],
) -> None:
    run, uploaded = hundred_megabyte_run["run"], hundred_megabyte_run["uploaded"]
    manifest = hundred_megabyte_run["manifest"]
    left_out = {f"big{i}" for i in range(10)} - set(uploaded)
    assert {s["path"] for s in manifest["skipped_outputs"]} == left_out
    assert manifest["skipped_outputs_count"] == len(left_out)
    assert f"{len(left_out)} output entries were not uploaded" in run["status_reason"]


# --------------------------------------------------------------------------- 5. links, devices
async def test_links_fifos_and_devices_in_the_output_folder_are_not_followed(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    # Debian's image has an /etc/passwd to point at (busybox's has none). A hard link into the
    # root filesystem fails (another device); hard links inside the folder have their own test.
    command = (
        "cd $OUTPUT_DIR; "
        "ln -s /etc/passwd passwd-link; ln -s /var/run/docker.sock sock; ln -s / rootdir; "
        "ln -s ../.taskdeploy/command.sh up-link; echo x > real; "
        "if ln /etc/passwd passwd-hard 2>/dev/null; then echo hardlink-out=yes; else echo hardlink-out=no; fi; "
        "mkfifo fifo; "
        "if mknod dev c 1 3 2>/dev/null; then echo mknod=yes; else echo mknod=no; fi; "
        "head -c 12 /etc/passwd"
    )
    body = make_run(f"s3://{bucket}/o", image=DEBIAN, command=command)
    run = await run_to_end(client, body, 300)
    assert run["state"] == "succeeded", run
    prefix = f"o/{run['id']}/"
    stdout = get_object(s3_client, bucket, prefix + "stdout.log")
    assert stdout == b"hardlink-out=no\nmknod=no\nroot:x:0:0:r", stdout

    uploaded = keys_under(s3_client, bucket, prefix + "output/")
    assert set(uploaded) == {prefix + "output/real"}, uploaded
    assert get_object(s3_client, bucket, prefix + "output/real") == b"x\n"
    for key in keys_under(s3_client, bucket, prefix):
        if key.endswith(("/run.json", "/stdout.log")):
            continue  # run.json holds the command text, stdout.log the 12 bytes printed above
        assert b"root:x:0:0" not in get_object(s3_client, bucket, key), key

    manifest = manifest_of(s3_client, bucket, run)
    kinds = {s["path"]: s["kind"] for s in manifest["skipped_outputs"]}
    assert kinds == {
        "passwd-link": "symlink",
        "sock": "symlink",
        "rootdir": "symlink",
        "up-link": "symlink",
        "fifo": "fifo",
    }
    assert manifest["skipped_outputs_count"] == 5
    assert "5 output entries were not uploaded" in run["status_reason"]


async def test_hard_linked_output_files_are_uploaded_under_both_names(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    command = "cd $OUTPUT_DIR && echo x > real && ln real hard"
    run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=command))
    assert run["state"] == "succeeded", run
    prefix = f"o/{run['id']}/output/"
    # Both names are regular files of the output folder with the same bytes.
    assert keys_under(s3_client, bucket, prefix) == {prefix + "real": 2, prefix + "hard": 2}
    assert get_object(s3_client, bucket, prefix + "real") == b"x\n"
    assert get_object(s3_client, bucket, prefix + "hard") == b"x\n"


async def test_output_names_that_are_not_utf8_are_skipped_and_listed(
    service_factory: Any, postgres_url: str, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    # Its own service and database: a run wedged in finishing must not hold a slot of the
    # shared service, nor be adopted by it, and its container is removed here.
    database = await create_database(postgres_url)
    service = dedicated_service(
        service_factory, database, s3_endpoint, {"TASKDEPLOY_SHUTDOWN_GRACE_SECONDS": "1"}
    )
    command = 'printf x > "$OUTPUT_DIR/$(printf "bad\\377name")"; echo ok > "$OUTPUT_DIR/good"'
    run: dict[str, Any] = {}
    async with client_for(service) as c:
        resp = await c.post("/v1/runs", json=make_run(f"s3://{bucket}/o", command=command))
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["id"]
        try:
            run = await wait_for_state(c, run_id, TERMINAL, 20)
        finally:
            if run.get("state") not in TERMINAL:
                service.stop()
                leftovers = docker_ids("ps", "-aq", "--filter", f"label=taskdeploy.run_id={run_id}")
                if leftovers:
                    subprocess.run(["docker", "rm", "-f", "-v", *leftovers], check=False)
    assert run["state"] == "succeeded", run
    prefix = f"o/{run_id}/"
    assert keys_under(s3_client, bucket, prefix + "output/") == {prefix + "output/good": 3}
    manifest = manifest_of(s3_client, bucket, run)
    assert manifest["skipped_outputs_count"] == 1
    [skipped] = manifest["skipped_outputs"]
    assert skipped["path"].startswith("bad") and skipped["path"].endswith("name"), skipped


# --------------------------------------------------------------------------- 6. unsafe input keys
UNSAFE_KEYS = {
    "dotdot": "../../etc/x",
    "empty-segment": "/a",  # under "p/" this is "p//a"
    "dot": "./b",
    "long-name": "k" * 1000,
}


async def test_unsafe_input_keys_end_the_run_in_error_before_anything_runs(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    submitted: dict[str, tuple[str, str]] = {}
    for name, rest in UNSAFE_KEYS.items():
        key = f"{name}/{rest}"
        s3_client.put_object(Bucket=bucket, Key=f"{name}/ok.txt", Body=b"fine\n")
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"hostile\n")
        # moto stores these keys as given (no normalisation of "..", "." or "//").
        assert key in keys_under(s3_client, bucket, f"{name}/"), key
        body = make_run(
            f"s3://{bucket}/o",
            input=f"s3://{bucket}/{name}/",
            command="echo ran > $OUTPUT_DIR/ran.txt; echo ran",
        )
        resp = await client.post("/v1/runs", json=body)
        assert resp.status_code == 202, resp.text
        submitted[name] = (resp.json()["id"], key)

    for run_id, key in submitted.values():
        run = await wait_for_state(client, run_id, TERMINAL, 120)
        assert run["state"] == "error", run
        assert "not a safe file path" in run["status_reason"]
        assert key[:200] in run["status_reason"], (key[:40], run["status_reason"])
        events = (await client.get(f"/v1/runs/{run_id}/events")).json()["items"]
        assert "running" not in [e["to_state"] for e in events]
        assert keys_under(s3_client, bucket, f"o/{run_id}/") == {}

    s3_client.put_object(Bucket=bucket, Key="clean/a.txt", Body=b"alpha\n")
    s3_client.put_object(Bucket=bucket, Key="clean/sub/b.txt", Body=b"beta\n")
    clean = await run_to_end(
        client,
        make_run(
            f"s3://{bucket}/o",
            input=f"s3://{bucket}/clean/",
            command="cat $INPUT_DIR/a.txt $INPUT_DIR/sub/b.txt",
        ),
    )
    assert clean["state"] == "succeeded", clean
    assert get_object(s3_client, bucket, f"o/{clean['id']}/stdout.log") == b"alpha\nbeta\n"


# --------------------------------------------------------------------------- 7. command as data
def hostile_command(canary: Path) -> str:
    """Quotes, substitutions, backslashes, Dockerfile-looking lines, unicode (with a bidi
    override), and a `$(touch ...)` that would leave a file on the host if the host ran it."""
    return (
        r"""printf '%s\n' 'single: "double" $HOME `id -u` $(id -u) \n \\ end'
printf '%s\n' "double: 'single' \$HOME \`id -u\` \\"
printf '%s\n' "subst: $(printf '%s' "in ner")" "arith: $((6 * 7))" "uid: $(id -u)"
"""
        + "printf '%s\\n' \"unicode: h\u00e9llo \u2713 \u65e5\u672c\u8a9e \U0001f642 \u202eevil\"\n"
        + r"""echo one \
two
printf '%s\n' '"; rm -rf / #' "'); DROP TABLE runs; --"
FROM scratch
RUN rm -rf /
"""
        + f'printf "%s" "$(touch {canary})"\n'
        + "printf '%s\\n' end\n"
    )


HOSTILE_STDOUT = (
    'single: "double" $HOME `id -u` $(id -u) \\n \\\\ end\n'
    "double: 'single' $HOME `id -u` \\\n"
    "subst: in ner\n"
    "arith: 42\n"
    "uid: 65534\n"
    "unicode: héllo ✓ 日本語 🙂 \u202eevil\n"
    "one two\n"
    '"; rm -rf / #\n'
    "'); DROP TABLE runs; --\n"
    "end\n"
).encode()


async def test_hostile_command_text_runs_as_data_in_the_shared_environment_image(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    canary = Path(f"/tmp/taskdeploy-canary-{uuid.uuid4().hex}")
    command = hostile_command(canary)
    run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=command))
    plain = await run_to_end(client, make_run(f"s3://{bucket}/o", command="echo plain"))
    assert run["state"] == "succeeded", run
    assert plain["state"] == "succeeded", plain

    prefix = f"o/{run['id']}/"
    assert get_object(s3_client, bucket, prefix + "stdout.log") == HOSTILE_STDOUT
    stderr = get_object(s3_client, bucket, prefix + "stderr.log")
    # The Dockerfile-looking lines were shell commands that do not exist, nothing more.
    assert b"FROM: not found" in stderr and b"RUN: not found" in stderr, stderr
    assert run["command"] == command
    assert manifest_of(s3_client, bucket, run)["request"]["command"] == command
    assert not canary.exists(), "the command's $(...) ran on the host"

    # Same packages, same environment image: the command text is not part of the image.
    assert run["image_id"] and run["image_id"] == plain["image_id"]
    assert (
        manifest_of(s3_client, bucket, run)["image"]["key"]
        == manifest_of(s3_client, bucket, plain)["image"]["key"]
    )


# --------------------------------------------------------------------------- 8. confinement
CONFINEMENT_PROBE = r"""
printf 'uid=%s\n' "$(id -u)"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d ' \t' | tr ':' '='
if ls /var/run/docker.sock >/dev/null 2>&1; then echo docker.sock=present; else echo docker.sock=absent; fi
printf 'kcore-bytes=%s\n' "$(head -c1 /proc/kcore 2>/dev/null | wc -c)"
printf 'net=%s\n' "$(ls /sys/class/net | tr '\n' ' ')"
printf 'root-mount=%s\n' "$(awk '$2 == "/" { split($4, o, ","); print o[1] }' /proc/mounts)"
printf 'root-write=%s\n' "$(touch /taskdeploy-probe 2>&1 || true)"
echo ok > "$OUTPUT_DIR/written" && echo output-write=ok
"""


async def test_the_command_runs_unprivileged_and_offline(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=CONFINEMENT_PROBE))
    assert run["state"] == "succeeded", run
    stdout = get_object(s3_client, bucket, f"o/{run['id']}/stdout.log").decode()
    seen = dict(line.split("=", 1) for line in stdout.splitlines())
    zero = "0" * 16
    assert seen["uid"] == "65534"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert seen[cap] == zero, (cap, seen)
    assert seen["NoNewPrivs"] == "1"
    assert seen["docker.sock"] == "absent"
    assert seen["kcore-bytes"] == "0"  # masked by the engine: reads nothing
    assert seen["net"].split() == ["lo"]
    # The root is the container's own capped layer (the workspace lives in it), writable only
    # where the image lets uid 65534 write.
    assert seen["root-mount"] == "rw"
    assert "Permission denied" in seen["root-write"], seen["root-write"]
    assert seen["output-write"] == "ok"
    assert get_object(s3_client, bucket, f"o/{run['id']}/output/written") == b"ok\n"


async def test_tmp_and_home_are_writable_for_the_job(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    command = 'echo tmp > /tmp/t && echo home > "$HOME/h" && cat /tmp/t "$HOME/h" && echo "$HOME"'
    run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=command))
    stderr = get_object(s3_client, bucket, f"o/{run['id']}/stderr.log")
    assert run["state"] == "succeeded", (run["status_reason"], stderr)
    assert get_object(s3_client, bucket, f"o/{run['id']}/stdout.log") == b"tmp\nhome\n/tmp\n"


# --------------------------------------------------------------------------- 9. network
async def test_network_is_forbidden_unless_the_operator_allows_it(
    client: httpx.AsyncClient, bucket: str
) -> None:
    resp = await client.post("/v1/runs", json=make_run(f"s3://{bucket}/o", network=True))
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["code"] == "forbidden"
    assert error["field"] == "network"
    assert "network" in error["message"]


async def test_operator_allowed_network_reaches_only_the_runs_that_ask(
    service_factory: Any, pg_database: str, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    service = dedicated_service(
        service_factory, pg_database, s3_endpoint, {"TASKDEPLOY_ALLOW_NETWORK": "true"}
    )
    command = "ls /sys/class/net"
    async with client_for(service) as c:
        online = await run_to_end(c, make_run(f"s3://{bucket}/o", command=command, network=True))
        offline = await run_to_end(c, make_run(f"s3://{bucket}/o", command=command))
    assert online["state"] == "succeeded" and online["network"] is True, online
    assert offline["state"] == "succeeded" and offline["network"] is False, offline
    interfaces = get_object(s3_client, bucket, f"o/{online['id']}/stdout.log").split()
    assert b"lo" in interfaces and len(interfaces) >= 2, interfaces
    assert get_object(s3_client, bucket, f"o/{offline['id']}/stdout.log").split() == [b"lo"]


# --------------------------------------------------------------------------- 10. zip inputs
def _zip(members: dict[str, bytes], *, deflate: bool = True) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


async def test_zip_inputs_are_unpacked_when_asked(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    s3_client.put_object(
        Bucket=bucket, Key="zin/data.zip", Body=_zip({"a/b.txt": b"zipped\n", "c.txt": b"c\n"})
    )
    body = make_run(
        f"s3://{bucket}/o",
        input=f"s3://{bucket}/zin/",
        unpack_zip=True,
        command="cat $INPUT_DIR/data/a/b.txt $INPUT_DIR/data/c.txt; ls $INPUT_DIR",
    )
    run = await run_to_end(client, body)
    assert run["state"] == "succeeded", run
    assert (await client.get(f"/v1/runs/{run['id']}/logs")).text == "zipped\nc\ndata\n"


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"../escape.txt": b"x"}, "'..'"),
        ({"/etc/abs.txt": b"x"}, "absolute"),
        ({"zeros.bin": bytes(50_000_000)}, "ratio"),
    ],
    ids=["dot-dot", "absolute", "zip-bomb"],
)
async def test_hostile_zip_inputs_are_refused_with_a_reason(
    client: httpx.AsyncClient, s3_client: Any, bucket: str, members: dict[str, bytes], reason: str
) -> None:
    s3_client.put_object(Bucket=bucket, Key="zbad/evil.zip", Body=_zip(members))
    body = make_run(f"s3://{bucket}/o", input=f"s3://{bucket}/zbad/", unpack_zip=True)
    run = await run_to_end(client, body)
    assert run["state"] == "error", run
    assert "zip input" in run["status_reason"] and reason in run["status_reason"], run
    assert run["started_at"] is None  # refused before any container ran
