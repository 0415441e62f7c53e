"""Hostile tenants against the host's resources: disk, file limits, image builds, the network.

Every test runs on the real engine (btrfs data root with simple quotas, set up by
scripts/ensure-docker.sh), PostgreSQL and moto's S3. Network tests reach only loopback and a
network namespace this module creates (with a veth pair and routes to it), never another address.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.harness import (
    BUSYBOX,
    DEBIAN,
    Service,
    free_port,
    get_object,
    keys_under,
    make_run,
    pg_s3_env,
    run_to_end,
)
from tests.e2e.outages import CuttableProxy
from tests.e2e.probe import probe

MiB = 1024 * 1024
DATA_ROOT = "/var/lib/taskdeploy/docker"  # scripts/ensure-docker.sh's default
JOB_NETWORK = "taskdeploy-jobs"


def free_bytes(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def host_fs_of_the_data_root() -> str:
    """The file system holding the engine's sparse btrfs file: the host's own free space."""
    return os.path.dirname(DATA_ROOT)


@pytest.fixture(scope="module")
async def disk_service(module_services: Any, postgres_url: str, s3_endpoint: str) -> Service:
    from tests.e2e.harness import create_database

    database = await create_database(postgres_url)
    return module_services(  # type: ignore[no-any-return]
        {
            **pg_s3_env(database, s3_endpoint),
            "TASKDEPLOY_DEFAULT_DISK_MB": "64",
            "TASKDEPLOY_MAX_DISK_MB": "256",
        }
    )


async def _eventually(check: Any, what: str, deadline_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    ends = loop.time() + deadline_s
    while not await check():
        if loop.time() > ends:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- disk
@pytest.mark.serial  # asserts latency (or free space): not beside other tests
async def test_an_endless_dd_stops_at_the_runs_disk_cap_and_the_run_says_so(
    disk_service: Service, s3_client: Any, bucket: str
) -> None:
    command = "dd if=/dev/zero of=$OUTPUT_DIR/x bs=1M"
    host_free = free_bytes(host_fs_of_the_data_root())
    engine_free = free_bytes(DATA_ROOT)
    async with (
        httpx.AsyncClient(base_url=disk_service.base_url, timeout=30) as client,
        probe(disk_service) as report,
    ):
        run = await run_to_end(
            client,
            make_run(
                f"s3://{bucket}/o",
                command=command,
                resources={"cpus": 1, "memory_mb": 128, "disk_mb": 100},
            ),
        )
        host_used = host_free - free_bytes(host_fs_of_the_data_root())
        engine_used = engine_free - free_bytes(DATA_ROOT)
    print(report.summary("endless dd into the workspace"))
    print(f"free space used: host {host_used / MiB:.0f} MiB, engine fs {engine_used / MiB:.0f} MiB")

    assert run["state"] == "failed", run
    assert run["resources"]["disk_mb"] == 100
    assert "disk limit of 100 MiB" in run["status_reason"], run["status_reason"]
    # (dd's own complaint is not in stderr.log: the wrapper's log files share the full disk.)
    # What the job wrote is harvested up to the cap, and no byte beyond it.
    written = keys_under(s3_client, bucket, f"o/{run['id']}/output/")[f"o/{run['id']}/output/x"]
    assert 80 * MiB <= written <= 100 * MiB, written
    # The engine's file system gave the job its 100 MiB and no more; the host's grew by that
    # (the sparse file) plus the service's own harvest spool of the output (deleted after).
    assert engine_used <= 100 * MiB + 8 * MiB, engine_used
    assert host_used <= 2 * 100 * MiB + 16 * MiB, host_used
    report.check()


async def test_the_default_disk_cap_applies_and_a_run_within_it_succeeds(
    disk_service: Service, s3_client: Any, bucket: str
) -> None:
    command = "dd if=/dev/zero of=$OUTPUT_DIR/x bs=1M count=20 2>/dev/null && echo done"
    async with httpx.AsyncClient(base_url=disk_service.base_url, timeout=30) as client:
        run = await run_to_end(client, make_run(f"s3://{bucket}/o", command=command))
    assert run["state"] == "succeeded", run
    assert run["resources"]["disk_mb"] == 64
    assert get_object(s3_client, bucket, f"o/{run['id']}/stdout.log") == b"done\n"


async def test_a_disk_cap_over_the_operators_maximum_is_a_422(
    disk_service: Service, bucket: str
) -> None:
    async with httpx.AsyncClient(base_url=disk_service.base_url, timeout=30) as client:
        resp = await client.post(
            "/v1/runs",
            json=make_run(f"s3://{bucket}/o", resources={"disk_mb": 257}),
        )
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["field"] == "resources.disk_mb"
    assert "256" in error["message"]


async def test_inputs_larger_than_the_disk_cap_end_the_run_before_it_starts(
    disk_service: Service, s3_client: Any, bucket: str
) -> None:
    s3_client.put_object(Bucket=bucket, Key="big/a.bin", Body=b"\0" * (40 * MiB))
    s3_client.put_object(Bucket=bucket, Key="big/b.bin", Body=b"\0" * (40 * MiB))
    async with httpx.AsyncClient(base_url=disk_service.base_url, timeout=30) as client:
        run = await run_to_end(
            client,
            make_run(f"s3://{bucket}/o", input=f"s3://{bucket}/big/", command="echo ran"),
        )
    assert run["state"] == "error", run
    assert "disk limit of 64 MiB" in run["status_reason"], run["status_reason"]
    assert run["started_at"] is None


async def test_the_job_sees_its_file_limits(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    command = 'echo "nofile=$(ulimit -n) core=$(ulimit -c) fsize=$(ulimit -f)"'
    run = await run_to_end(
        client,
        make_run(f"s3://{bucket}/o", command=command, resources={"disk_mb": 32}),
    )
    assert run["state"] == "succeeded", run
    # ulimit -f counts 512-byte blocks in busybox and POSIX shells.
    expected = f"nofile=4096 core=0 fsize={32 * MiB // 512}\n".encode()
    assert get_object(s3_client, bucket, f"o/{run['id']}/stdout.log") == expected


# --------------------------------------------------------------------------- zip before download
def _stored_zip(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("blob.bin", os.urandom(size))
    return buffer.getvalue()


async def test_a_zip_over_the_input_room_is_refused_before_a_byte_is_downloaded(
    service_factory: Any, pg_database: str, s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    archive = _stored_zip(30 * MiB)
    s3_client.put_object(Bucket=bucket, Key="zin/data.zip", Body=archive)
    port = int(s3_endpoint.rsplit(":", 1)[1])
    proxy = CuttableProxy(port)
    try:
        service = service_factory(
            {**pg_s3_env(pg_database, proxy.url), "TASKDEPLOY_DEFAULT_DISK_MB": "16"}
        )
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
            run = await run_to_end(
                client,
                make_run(
                    f"s3://{bucket}/o",
                    input=f"s3://{bucket}/zin/",
                    unpack_zip=True,
                    command="echo ran",
                ),
            )
    finally:
        proxy.close()
    assert run["state"] == "error", run
    assert "data.zip" in run["status_reason"] and "refused" in run["status_reason"], run
    # Listing the prefix and uploading the logs are a few KiB; the archive was never fetched.
    assert proxy.bytes_down < 1 * MiB, proxy.bytes_down


# --------------------------------------------------------------------------- image builds
async def test_an_image_build_past_its_time_limit_ends_the_run(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    # That the engine then stops the build and removes its step container is proven on the
    # adapter (tests/integration/test_docker_adapter.py::test_a_cancelled_build_stops...).
    service = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_BUILD_TIMEOUT_SECONDS": "0.5"}
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        # A package set nobody built before: its build starts with apt-get update, seconds long.
        run = await run_to_end(
            client,
            make_run(
                f"s3://{bucket}/o",
                image=DEBIAN,
                packages=[f"jq={uuid.uuid4().hex[:8]}"],
                command="true",
            ),
        )
    assert run["state"] == "error", run
    assert "longer than 0.5 s" in run["status_reason"], run["status_reason"]


# --------------------------------------------------------------------------- network
@dataclass
class FakeInternet:
    """A network namespace this test owns, reached from the host over a veth pair, holding:
    `public` (a TEST-NET-2 address standing in for the internet) and the cloud metadata
    address, each with an HTTP server that answers who it is."""

    namespace: str
    public: str = "198.51.100.7"
    metadata: str = "169.254.169.254"
    port: int = 8080


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def fake_internet() -> Iterator[FakeInternet]:
    tag = uuid.uuid4().hex[:6]
    ns, host_end, ns_end = f"tdnet-{tag}", f"tdh{tag}", f"tdn{tag}"
    net = FakeInternet(namespace=ns)
    servers: list[subprocess.Popen[bytes]] = []
    routes: list[str] = []
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", ns)
        # 198.18.0.0/15 is the benchmarking range: nobody's real address.
        _ip("addr", "add", "198.18.77.1/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        inside = ["netns", "exec", ns, "ip"]
        _ip(*inside, "addr", "add", "198.18.77.2/30", "dev", ns_end)
        for address in (net.public, net.metadata):
            _ip(*inside, "addr", "add", f"{address}/32", "dev", ns_end)
        _ip(*inside, "link", "set", ns_end, "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "route", "add", "default", "via", "198.18.77.1")
        for address in (net.public, net.metadata):
            _ip("route", "add", f"{address}/32", "via", "198.18.77.2")
            routes.append(f"{address}/32")
        for address in (net.public, net.metadata):
            servers.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        shutil.which("python3") or "python3",
                        "-c",
                        _WHOAMI_SERVER,
                        address,
                        str(net.port),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        for server, address in zip(servers, (net.public, net.metadata), strict=True):
            _wait_listening(ns, address, net.port, server)
        yield net
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=10)
        for route in routes:
            subprocess.run(["ip", "route", "del", route], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


_WHOAMI_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def _wait_listening(ns: str, address: str, port: int, server: subprocess.Popen[bytes]) -> None:
    """Until the namespace's server accepts connections (60 s at most; a loaded machine starts
    Python slowly), failing at once with its error output if it exits."""
    probe_code = (
        "import socket,sys\n"
        "try: socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            error = server.stderr.read().decode(errors="replace") if server.stderr else ""
            raise AssertionError(f"the server on {address} in {ns} exited: {error}")
        probe = ["ip", "netns", "exec", ns, "python3", "-c", probe_code, address, str(port)]
        if subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {address}:{port} in {ns} after 60 s")


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP server on every address of this host (0.0.0.0), standing for its own services."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", free_port()))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhost")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def _gateways() -> list[str]:
    """This host's addresses a container could aim at: both bridges' gateways and eth0's."""
    out = subprocess.run(
        [
            "docker",
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
            JOB_NETWORK,
            "bridge",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    eth0 = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.split()
    own = [word.split("/")[0] for i, word in enumerate(eth0) if i and eth0[i - 1] == "inet"]
    return [*out, *own]


async def test_a_network_run_reaches_the_internet_but_not_the_host_metadata_or_private_ranges(
    service_factory: Any,
    pg_database: str,
    s3_endpoint: str,
    s3_client: Any,
    bucket: str,
    fake_internet: FakeInternet,
    host_listener: int,
) -> None:
    service = service_factory(
        {**pg_s3_env(pg_database, s3_endpoint), "TASKDEPLOY_ALLOW_NETWORK": "true"}
    )
    targets = {
        "public": f"{fake_internet.public}:{fake_internet.port}",
        "metadata": f"{fake_internet.metadata}:{fake_internet.port}",
        **{f"host-{ip}": f"{ip}:{host_listener}" for ip in _gateways()},
    }
    # busybox nc, not wget: Debian's static busybox wget segfaults (static glibc resolver).
    request = 'printf "GET / HTTP/1.0\\r\\n\\r\\n"'
    command = " ; ".join(
        f"body=$({request} | nc -w 3 {target.replace(':', ' ')} 2>/dev/null | tail -n 1); "
        f'printf "{name}=%s\\n" "${{body:-unreachable}}"'
        for name, target in targets.items()
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        run = await run_to_end(
            client, make_run(f"s3://{bucket}/o", image=BUSYBOX, command=command, network=True)
        )
    assert run["state"] == "succeeded", run
    seen = dict(
        line.split("=", 1)
        for line in get_object(s3_client, bucket, f"o/{run['id']}/stdout.log").decode().split("\n")
        if line
    )
    assert seen.pop("public") == fake_internet.public, "the network run has no network at all"
    assert seen.pop("metadata") == "unreachable"
    assert seen and all(answer == "unreachable" for answer in seen.values()), seen


async def test_the_service_refuses_to_start_with_network_on_and_no_job_network(
    service_factory: Any, pg_database: str, s3_endpoint: str
) -> None:
    with pytest.raises(AssertionError) as failure:
        service_factory(
            {
                **pg_s3_env(pg_database, s3_endpoint),
                "TASKDEPLOY_ALLOW_NETWORK": "true",
                "TASKDEPLOY_JOB_NETWORK": f"missing-{uuid.uuid4().hex[:8]}",
            }
        )
    assert "ensure-job-network.sh" in str(failure.value)


# --------------------------------------------------------------------------- object store
async def test_an_archived_input_ends_the_run_at_once_instead_of_retrying(
    client: httpx.AsyncClient, s3_client: Any, bucket: str
) -> None:
    # Glacier-class objects answer InvalidObjectState until restored: a refusal, not an outage
    # (before, staging retried it until the 30-minute preparation deadline).
    s3_client.put_object(Bucket=bucket, Key="cold/a.txt", Body=b"x", StorageClass="GLACIER")
    run = await run_to_end(
        client,
        make_run(f"s3://{bucket}/o", input=f"s3://{bucket}/cold/", command="cat $INPUT_DIR/a.txt"),
        deadline_s=60,
    )
    assert run["state"] == "error", run
    assert "InvalidObjectState" in run["status_reason"], run["status_reason"]
    assert run["started_at"] is None


# --------------------------------------------------------------------------- schedules
async def test_a_schedule_the_tightened_limits_refuse_records_skips_and_the_others_fire(
    service_factory: Any, pg_database: str, s3_endpoint: str, bucket: str
) -> None:
    env = pg_s3_env(pg_database, s3_endpoint)
    loose = service_factory({**env, "TASKDEPLOY_ALLOW_NETWORK": "true"})
    every_second = "* * * * * *"
    async with httpx.AsyncClient(base_url=loose.base_url, timeout=30) as client:
        created = {}
        for name, network in (("online", True), ("plain", False)):
            body = {
                "name": name,
                "cron": every_second,
                "paused": True,
                "run": make_run(f"s3://{bucket}/o", command="true", network=network),
            }
            resp = await client.post("/v1/schedules", json=body)
            assert resp.status_code == 201, resp.text
            created[name] = resp.json()["id"]
    loose.stop()
    # The operator turns network off; the schedules made under the old limits stay.
    tight = service_factory(env)
    async with httpx.AsyncClient(base_url=tight.base_url, timeout=30) as client:
        for schedule_id in created.values():
            assert (await client.post(f"/v1/schedules/{schedule_id}/resume")).status_code == 200

        async def fired() -> bool:
            runs = (await client.get(f"/v1/schedules/{created['plain']}/runs")).json()["items"]
            fires = (await client.get(f"/v1/schedules/{created['online']}/fires")).json()["items"]
            return len(runs) >= 2 and len(fires) >= 2

        await _eventually(fired, "the plain schedule to fire and the online one to skip")
        fires = (await client.get(f"/v1/schedules/{created['online']}/fires")).json()["items"]
        online_runs = (await client.get(f"/v1/schedules/{created['online']}/runs")).json()
        ready = (await client.get("/readyz")).json()
        for schedule_id in created.values():
            await client.post(f"/v1/schedules/{schedule_id}/pause")
    assert online_runs["items"] == []
    assert all("network" in fire["reason"] for fire in fires), fires
    assert ready["checks"]["worker:scheduler"] == "ok", ready
