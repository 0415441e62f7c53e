"""Webhooks between hostile tenants, on the real service (PostgreSQL, S3, Docker) with real HTTP
receivers on 127.0.0.2: bad callback URLs refused at submission, one owner's hanging, endless
and broken receivers leaving another owner's events alone, no lock or transaction held while a
request is on the wire, per-owner signing secrets and their rotation.

Receivers listen on 127.0.0.2 and the services allow exactly TASKDEPLOY_WEBHOOK_ALLOWED_CIDRS=
127.0.0.2/32: the rest of 127.0.0.0/8 stays refused."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.harness import (
    TERMINAL,
    Service,
    cli,
    create_database,
    free_port,
    make_run,
    new_key,
    pg_s3_env,
    wait_for_state,
)

RECEIVER_HOST = "127.0.0.2"
# The receivers' address, and any bucket for the owners whose keys these tests make.
ALLOWED = {
    "TASKDEPLOY_WEBHOOK_ALLOWED_CIDRS": f"{RECEIVER_HOST}/32",
    "TASKDEPLOY_ALLOWED_BUCKETS": "*",
}
OPERATOR_SECRET = "operator-webhook-secret"


# --------------------------------------------------------------------------- verification
def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """The README's verification, as a receiver would write it: any v1 may match."""
    timestamp, signatures = None, []
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if not timestamp or not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False  # missing, or too old: a replay
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return any(hmac.compare_digest(mac.hexdigest(), signature) for signature in signatures)


# --------------------------------------------------------------------------- receivers
class Receiver:
    """An HTTP server on 127.0.0.2 whose answer depends on the path's first segment:
    /ok answers 200; /hang reads the request and never answers (until the client hangs up);
    /endless answers 200 with a body that never ends; /block waits for `release`, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.hanging = 0  # hang requests whose connection is still open
        self.hanging_at: dict[str, int] = {}  # path → hang connections open when it arrived
        self.hung_up = 0  # hang requests the client gave up on
        self.endless_bytes = 0
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.closing = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers.items()), body))
                    receiver.hanging_at[self.path] = receiver.hanging
                mode = self.path.split("/")[1]
                if mode == "hang":
                    receiver._hang(self.connection)
                    return
                if mode == "block":
                    receiver.arrived.set()
                    receiver.release.wait(120)
                if mode == "endless":
                    receiver._endless(self)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((RECEIVER_HOST, free_port()), Handler)
        self.server.daemon_threads = True
        self.base = f"http://{RECEIVER_HOST}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _hang(self, connection: socket.socket) -> None:
        with self.lock:
            self.hanging += 1
        connection.settimeout(0.05)
        try:
            while not self.closing.is_set():
                try:
                    if connection.recv(1) == b"":
                        break  # the client hung up
                except TimeoutError:
                    continue
                except OSError:
                    break
        finally:
            with self.lock:
                self.hanging -= 1
                self.hung_up += not self.closing.is_set()

    def _endless(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        deadline = time.monotonic() + 120
        try:
            while not self.closing.is_set() and time.monotonic() < deadline:
                handler.wfile.write(chunk)
                self.endless_bytes += 65536
        except OSError:
            pass  # the client hung up: the point

    def event_ids(self, path_prefix: str = "/") -> Counter[str]:
        with self.lock:
            return Counter(
                headers["X-Taskdeploy-Event-Id"]
                for path, headers, _ in self.requests
                if path.startswith(path_prefix)
            )

    def close(self) -> None:
        self.closing.set()
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


def as_(service: Service, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=service.base_url, headers=headers, timeout=30)


async def deliveries_of(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/runs/{run_id}/deliveries")
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def until(predicate: Any, what: str, deadline_s: float = 60) -> Any:
    """Polls an async predicate until it returns something truthy."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened within {deadline_s} s: {what}")


async def submit(client: httpx.AsyncClient, bucket: str, callback_url: str | None) -> str:
    body = make_run(f"s3://{bucket}/o", **({"callback_url": callback_url} if callback_url else {}))
    resp = await client.post("/v1/runs", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def pg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://")


# --------------------------------------------------------------------------- submission
BAD_URLS = {
    "tab": "http://hooks.example.com/\tx",
    "newline": "http://hooks.example.com/x\n",
    "space": "http://hooks.example.com/a b",
    "carriage return": "http://hooks.example.com/\rx",
    "tab in the host": "http://hooks\t.example.com/",
    "line separator": "http://hooks.example.com/\u2028",
    "credentials": "http://user:pw@hooks.example.com/",
    "bad port": "http://hooks.example.com:99999/",
    "no host": "http:///x",
}


async def test_bad_callback_urls_are_a_422_naming_the_field(
    client: httpx.AsyncClient, bucket: str
) -> None:
    schedule = await client.post(
        "/v1/schedules",
        json={"name": "ok", "cron": "0 3 * * *", "run": make_run(f"s3://{bucket}/o")},
    )
    assert schedule.status_code == 201, schedule.text
    for what, url in BAD_URLS.items():
        run = make_run(f"s3://{bucket}/o", callback_url=url)
        resp = await client.post("/v1/runs", json=run)
        assert resp.status_code == 422, (what, resp.text)
        assert resp.json()["error"]["field"] == "callback_url", (what, resp.text)
        template = {"name": "s", "cron": "0 3 * * *", "run": run}
        made = await client.post("/v1/schedules", json=template)
        assert made.status_code == 422, (what, made.text)
        assert made.json()["error"]["field"] == "run.callback_url", (what, made.text)
        changed = await client.patch(f"/v1/schedules/{schedule.json()['id']}", json={"run": run})
        assert changed.status_code == 422, (what, changed.text)
        assert changed.json()["error"]["field"] == "run.callback_url"


@pytest.mark.slow
def test_the_operator_webhook_url_is_checked_at_start_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKDEPLOY_")}
    env["TASKDEPLOY_DATA_DIR"] = str(tmp_path)
    for settings, expected in (
        ({"TASKDEPLOY_WEBHOOK_URL": "http://hooks.example.com/\tx"}, "U+0009"),
        ({"TASKDEPLOY_WEBHOOK_URL": "http://127.0.0.1:9/x"}, "loopback"),
        ({"TASKDEPLOY_WEBHOOK_URL": "http://10.0.0.1/x", **ALLOWED}, "private"),
        ({"TASKDEPLOY_WEBHOOK_ALLOWED_CIDRS": "127.0.0.2/8"}, "CIDR"),
    ):
        done = cli({**env, **settings}, "serve")
        assert done.returncode == 2, (settings, done.stdout, done.stderr)
        variable = next(iter(settings))
        assert f"taskdeploy: {variable}" in done.stderr and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- isolation
@pytest.fixture
async def shared_notifier(service_factory: Any, pg_database: str, s3_endpoint: str) -> Service:
    """Six attempts at once, three of one owner's: the shares this test leans on."""
    env = {
        **pg_s3_env(pg_database, s3_endpoint),
        **ALLOWED,
        "TASKDEPLOY_WEBHOOK_TIMEOUT_SECONDS": "30",
        "TASKDEPLOY_WEBHOOK_MAX_IN_FLIGHT": "6",
        "TASKDEPLOY_WEBHOOK_MAX_IN_FLIGHT_PER_OWNER": "3",
    }
    return service_factory(env)  # type: ignore[no-any-return]


async def insert_delivery(database_url: str, owner: str, run_id: str, url: str) -> str:
    """An outbox row made without the API: what rows written before this check look like."""
    event_id = str(uuid.uuid4())
    payload = json.dumps({"id": event_id, "type": "run.succeeded", "data": {"id": run_id}})
    conn = await asyncpg.connect(pg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO webhook_deliveries (id, run_id, owner, url, event_type, payload, status,"
            " attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, 'run.succeeded',"
            " $5, 'pending', 0, now(), now())",
            event_id,
            run_id,
            owner,
            url,
            payload,
        )
    finally:
        await conn.close()
    return event_id


async def delivery_row(database_url: str, event_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(pg_dsn(database_url))
    try:
        row = await conn.fetchrow("SELECT * FROM webhook_deliveries WHERE id = $1", event_id)
        attempts = await conn.fetch(
            "SELECT status_code, error FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id",
            event_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return {**dict(row), "attempts": [dict(a) for a in attempts]}


@pytest.mark.slow
async def test_one_owners_hostile_receivers_leave_another_owners_events_alone(
    shared_notifier: Service, pg_database: str, receiver: Receiver, bucket: str
) -> None:
    service = shared_notifier
    mallory, alice = new_key(service, "mallory"), new_key(service, "alice")
    async with as_(service, mallory) as m, as_(service, alice) as a:
        # Mallory's broken receivers: a URL that makes an HTTP client raise (a row from before
        # submission checked URLs), one loopback address outside the allow-list, one endless
        # body, and four receivers that never answer (one more than Mallory's share).
        first = await submit(m, bucket, f"{receiver.base}/endless")
        old_run = str(uuid.uuid4())
        broken = await insert_delivery(pg_database, "mallory", old_run, f"{receiver.base}/\tx")
        loopback = await insert_delivery(
            pg_database, "mallory", old_run, f"http://127.0.0.1:{receiver.server.server_port}/ok"
        )
        hanging = [await submit(m, bucket, f"{receiver.base}/hang/{n}") for n in range(4)]
        for run_id in [first, *hanging]:
            await wait_for_state(m, run_id, TERMINAL)

        async def three_hanging() -> bool:
            return receiver.hanging == 3

        await until(three_hanging, "three of mallory's attempts on the wire")

        # Alice's events go through while Mallory's three attempts hang.
        alice_runs = [await submit(a, bucket, f"{receiver.base}/ok/{n}") for n in range(3)]

        async def alice_delivered() -> list[dict[str, Any]]:
            found = [d for run_id in alice_runs for d in await deliveries_of(a, run_id)]
            done = len(found) == 3 and all(d["status"] == "delivered" for d in found)
            return found if done else []

        delivered = await until(alice_delivered, "alice's events delivered")
        # Each of Alice's events arrived while three of Mallory's attempts were on the wire
        # (when one times out, Mallory's fourth takes its place: her share stays full).
        arrivals = {n: receiver.hanging_at[f"/ok/{n}"] for n in range(3)}
        assert arrivals == {0: 3, 1: 3, 2: 3}, arrivals
        assert all([x["status_code"] for x in d["attempts"]] == [200] for d in delivered)

        # Mallory's own deliveries: each failure recorded against itself.
        async def hangs_timed_out() -> list[dict[str, Any]]:
            found = [d for run_id in hanging for d in await deliveries_of(m, run_id)]
            return found if sum(bool(d["attempts"]) for d in found) >= 3 else []

        for delivery in await until(hangs_timed_out, "mallory's hanging attempts timed out", 60):
            for attempt in delivery["attempts"]:
                assert attempt["status_code"] is None
                assert attempt["error"] == "TimeoutError: no complete answer within 30 s"
            assert delivery["status"] == "pending"  # retried later, with backoff

        async def hung_up() -> bool:
            return receiver.hung_up >= 3

        await until(hung_up, "the service hanging up on mallory's receivers")
        (endless,) = await deliveries_of(m, first)
        assert endless["status"] == "delivered" and endless["attempts"][0]["error"] is None
        assert receiver.endless_bytes > 65536  # it kept sending; the service stopped reading
        broken_row = await delivery_row(pg_database, broken)
        assert broken_row["status"] == "failed" and "U+0009" in broken_row["last_error"]
        assert len(broken_row["attempts"]) == 1
        loopback_row = await delivery_row(pg_database, loopback)
        assert loopback_row["status"] == "failed"
        assert "127.0.0.1 is a loopback address" in loopback_row["last_error"]

        # Alice got each event exactly once, even after many of Mallory's ticks.
        alice_events = receiver.event_ids("/ok/")
        assert sorted(alice_events) == sorted(d["id"] for d in delivered)
        assert set(alice_events.values()) == {1}


# --------------------------------------------------------------------------- no lock held
async def test_no_lock_or_transaction_is_held_while_a_request_is_on_the_wire(
    service_factory: Any, pg_database: str, s3_endpoint: str, receiver: Receiver, bucket: str
) -> None:
    service = service_factory({**pg_s3_env(pg_database, s3_endpoint), **ALLOWED})
    async with as_(service, None) as client:
        run_id = await submit(client, bucket, f"{receiver.base}/block")
        await wait_for_state(client, run_id, TERMINAL)
        assert await asyncio.to_thread(receiver.arrived.wait, 60)
        conn = await asyncpg.connect(pg_dsn(pg_database))
        try:
            on_the_wire_since: datetime = await conn.fetchval("SELECT now()")
            (event_id,) = receiver.event_ids()
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT next_attempt_at > now() AS leased FROM webhook_deliveries"
                    " WHERE id = $1 FOR UPDATE NOWAIT",
                    event_id,
                )
            assert row is not None and row["leased"]  # claimed by a lease, not by a lock
            # Sampled for a second while the receiver still holds the request: no session of
            # the service sits in a transaction that began before the request went out.
            deadline = time.monotonic() + 1.0
            samples = 0
            while time.monotonic() < deadline:
                open_transactions = await conn.fetch(
                    "SELECT pid, state, query FROM pg_stat_activity WHERE datname = $1"
                    " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
                    " AND xact_start < $2",
                    pg_database.rpartition("/")[2],
                    on_the_wire_since,
                )
                assert open_transactions == [], open_transactions
                samples += 1
                await asyncio.sleep(0.05)
            assert samples >= 5 and not receiver.release.is_set()
        finally:
            await conn.close()
        receiver.release.set()

        async def delivered() -> bool:
            (delivery,) = await deliveries_of(client, run_id)
            return bool(delivery["status"] == "delivered")

        await until(delivered, "the held delivery recorded once released")


# --------------------------------------------------------------------------- signing secrets
@pytest.fixture(scope="module")
def operator_receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
async def signing(
    module_services: Any,
    postgres_url: str,
    s3_endpoint: str,
    created_databases: list[str],
    operator_receiver: Receiver,
) -> AsyncIterator[tuple[Service, str, str]]:
    """A service whose operator URL is a receiver, and keys of two owners."""
    database = await create_database(postgres_url)
    created_databases.append(database)
    env = {
        **pg_s3_env(database, s3_endpoint),
        **ALLOWED,
        "TASKDEPLOY_WEBHOOK_URL": f"{operator_receiver.base}/ok/operator",
        "TASKDEPLOY_WEBHOOK_SECRET": OPERATOR_SECRET,
    }
    service = module_services(env)
    yield service, new_key(service, "alice"), new_key(service, "bob")


async def signed_event(
    client: httpx.AsyncClient, receiver: Receiver, bucket: str, path: str | None
) -> tuple[str, bytes]:
    """Runs a command whose events go to `path` (None: the operator's URL); its header, body."""
    run_id = await submit(client, bucket, f"{receiver.base}{path}" if path else None)

    async def arrived() -> tuple[str, bytes] | None:
        for _, headers, body in list(receiver.requests):
            if json.loads(body)["data"]["id"] == run_id:
                return headers["X-Taskdeploy-Signature"], body
        return None

    return await until(arrived, f"the event of run {run_id}")  # type: ignore[no-any-return]


async def test_each_owner_signs_with_their_own_secret(
    signing: tuple[Service, str, str], receiver: Receiver, operator_receiver: Receiver, bucket: str
) -> None:
    service, alice, bob = signing
    async with as_(service, alice) as a, as_(service, bob) as b:
        alice_secret = (await a.get("/v1/webhooks/secret")).json()
        bob_secret = (await b.get("/v1/webhooks/secret")).json()
        assert alice_secret["owner"] == "alice" and bob_secret["owner"] == "bob"
        assert (await a.get("/v1/webhooks/secret")).json()["secret"] == alice_secret["secret"]
        keys = {alice_secret["secret"], bob_secret["secret"], OPERATOR_SECRET}
        assert len(keys) == 3

        header, body = await signed_event(a, receiver, bucket, "/ok/alice")
        assert header.count("v1=") == 1
        assert verify(alice_secret["secret"], header, body)
        assert not verify(bob_secret["secret"], header, body)  # bob cannot forge alice's
        assert not verify(OPERATOR_SECRET, header, body)
        header, body = await signed_event(b, receiver, bucket, "/ok/bob")
        assert verify(bob_secret["secret"], header, body)
        assert not verify(alice_secret["secret"], header, body)
        # No callback_url of her own: the event goes to the operator's URL, signed with the
        # operator's secret.
        header, body = await signed_event(a, operator_receiver, bucket, None)
        assert verify(OPERATOR_SECRET, header, body)
        assert not verify(alice_secret["secret"], header, body)


async def test_after_a_rotation_both_secrets_sign_for_the_grace_period(
    signing: tuple[Service, str, str], receiver: Receiver, bucket: str
) -> None:
    service, alice, _ = signing
    async with as_(service, alice) as a:
        old = (await a.get("/v1/webhooks/secret")).json()["secret"]
        rotated = (await a.post("/v1/webhooks/secret/rotate")).json()
        new = rotated["secret"]
        assert new != old
        grace = datetime.fromisoformat(rotated["previous_expires_at"]) - datetime.fromisoformat(
            rotated["rotated_at"]
        )
        assert grace.total_seconds() == 24 * 3600  # the default grace period
        assert (await a.get("/v1/webhooks/secret")).json()["secret"] == new

        header, body = await signed_event(a, receiver, bucket, "/ok/rotated")
        assert header.count("v1=") == 2
        assert verify(new, header, body) and verify(old, header, body)

        # A short grace period: once it is over, only the newest secret signs.
        short = (await a.post("/v1/webhooks/secret/rotate", json={"grace_seconds": 2})).json()
        newest = short["secret"]
        expires = datetime.fromisoformat(short["previous_expires_at"]).timestamp()
        header, body = await signed_event(a, receiver, bucket, "/ok/short-grace")
        # The keys are chosen just before the send stamps t=: an event sent before the short
        # grace ended is signed by both (a slow run may be sent after it; then see below).
        signed_at = int(header.partition("t=")[2].partition(",")[0])
        assert verify(newest, header, body)
        if signed_at + 1 < expires:
            assert verify(new, header, body), (header, expires)

        async def grace_over() -> bool:
            return time.time() > expires + 0.5

        await until(grace_over, "the short grace period is over")
        header, body = await signed_event(a, receiver, bucket, "/ok/after-grace")
        assert header.count("v1=") == 1
        assert verify(newest, header, body) and not verify(new, header, body)
        assert not verify(old, header, body)

        bad = await a.post("/v1/webhooks/secret/rotate", json={"grace_seconds": -1})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "grace_seconds"
