"""The webhook outbox on real databases (PostgreSQL and SQLite): migration 0008 both ways,
claims that take turns across owners and respect each owner's share, leases, per-owner keys,
and two notifiers on one PostgreSQL never taking the same event. The sender is a fake at the
process boundary (its real twin: tests/unit/test_webhook_sender.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import migrate
from app.db import create_engine, create_sessionmaker, utcnow
from app.models import WebhookAttempt, WebhookDelivery
from app.services.webhook_targets import DestinationPolicy
from app.services.webhooks import SigningSecrets, signature_header
from app.workers.notifier import Notifier, NotifierConfig

OPERATOR_URL = "https://ops.example.com/hook"


class HeldSender:
    """Resolves every host to a public address and holds each POST until released."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def resolve(self, host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    async def post(self, url: str, address: str, headers: dict[str, str], body: bytes) -> int:
        self.posts.append({"url": url, "address": address, "headers": headers, "body": body})
        await self.release.wait()
        return 200

    async def close(self) -> None:
        pass


async def _admin(postgres_url: str, statement: str) -> None:
    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def pg_url(postgres_url: str) -> AsyncIterator[str]:
    """A database of this test's own on the suite's PostgreSQL, dropped afterwards."""
    name = f"hooks_{uuid.uuid4().hex[:12]}"
    await _admin(postgres_url, f'CREATE DATABASE "{name}"')
    yield f"{postgres_url.rpartition('/')[0]}/{name}"
    await _admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'hooks.db'}"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await asyncio.to_thread(migrate.upgrade, database_url)
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


def notifier(
    db: async_sessionmaker[AsyncSession], sender: HeldSender, **overrides: Any
) -> Notifier:
    options: dict[str, Any] = {
        "policy": DestinationPolicy(),
        "operator_url": OPERATOR_URL,
        "operator_secret": "operator-secret",
        "total_seconds": 3600,
        "timeout_seconds": 10,
        "max_in_flight": 5,
        "max_in_flight_per_owner": 2,
    }
    options.update(overrides)
    return Notifier(db, sender, NotifierConfig(**options))


async def add_deliveries(
    db: async_sessionmaker[AsyncSession], owner: str | None, count: int, url: str
) -> list[str]:
    ids = []
    async with db() as session, session.begin():
        for n in range(count):
            event_id = str(uuid.uuid4())
            ids.append(event_id)
            created = utcnow() - timedelta(seconds=100 - n)
            session.add(
                WebhookDelivery(
                    id=event_id,
                    run_id=str(uuid.uuid4()),
                    owner=owner,
                    url=url,
                    event_type="run.succeeded",
                    payload={"id": event_id, "type": "run.succeeded"},
                    status="pending",
                    attempts=0,
                    next_attempt_at=created,
                    created_at=created,
                )
            )
    return ids


async def wait_for_posts(sender: HeldSender, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while len(sender.posts) < count:
        assert asyncio.get_running_loop().time() < deadline, sender.posts
        await asyncio.sleep(0.01)


def _alembic(url: str, action: str, revision: str) -> None:
    getattr(command, action)(migrate.alembic_config(url), revision)


async def test_migration_0008_upgrades_backfills_and_downgrades(database_url: str) -> None:
    await asyncio.to_thread(_alembic, database_url, "upgrade", "0007")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO runs (id, owner, state, command, packages, image, output_uri, "
                    "cpus, memory_mb, timeout_seconds, env, network, unpack_zip, request_hash, "
                    "oom_killed, cancel_requested, created_at, updated_at, artifacts, attempt, "
                    "attempts) VALUES ('r1', 'alice', 'succeeded', 'true', '[]', 'busybox', "
                    "'s3://b/o/', 1, 64, 60, '{}', false, false, 'h', false, false, "
                    ":now, :now, '[]', 1, '[]')"
                ),
                {"now": utcnow()},
            )
            for event_id, run_id in (("e1", "r1"), ("e2", "gone")):
                await conn.execute(
                    text(
                        "INSERT INTO webhook_deliveries (id, run_id, url, event_type, payload, "
                        "status, attempts, next_attempt_at, created_at) VALUES (:id, :run, "
                        "'https://x.example/', 'run.succeeded', '{}', 'pending', 0, :now, :now)"
                    ),
                    {"id": event_id, "run": run_id, "now": utcnow()},
                )
        await asyncio.to_thread(_alembic, database_url, "upgrade", "0008")
        async with engine.connect() as conn:
            owners = dict(
                (await conn.execute(text("SELECT id, owner FROM webhook_deliveries"))).all()
            )
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert owners == {"e1": "alice", "e2": None}  # a delivery without its run: operator's
        assert "webhook_signing_secrets" in tables

        await asyncio.to_thread(_alembic, database_url, "downgrade", "0007")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("webhook_deliveries")}
            )
        assert "webhook_signing_secrets" not in tables and "owner" not in columns
        await asyncio.to_thread(_alembic, database_url, "upgrade", "head")
    finally:
        await engine.dispose()


async def test_claims_take_turns_across_owners_within_their_shares(
    db: async_sessionmaker[AsyncSession],
) -> None:
    mallory = await add_deliveries(db, "mallory", 10, "https://m.example.com/hook")
    alice = await add_deliveries(db, "alice", 3, "https://a.example.com/hook")
    sender = HeldSender()
    loop = notifier(db, sender)
    await loop.run_once()
    await wait_for_posts(sender, 4)
    # Mallory's ten are older, yet each owner gets 2 slots (their share), oldest first.
    sent = {post["headers"]["X-Taskdeploy-Event-Id"] for post in sender.posts}
    assert sent == {*mallory[:2], *alice[:2]}
    assert all(post["address"] == "93.184.216.34" for post in sender.posts)

    # While they are on the wire their rows are leased: not due, so nobody takes them.
    async with db() as session:
        leased = (
            await session.execute(select(WebhookDelivery).where(WebhookDelivery.id.in_(sent)))
        ).scalars()
        assert all(row.next_attempt_at > utcnow() + timedelta(seconds=10) for row in leased)
    await loop.run_once()  # shares full: nothing more is claimed
    assert len(sender.posts) == 4

    sender.release.set()
    await loop.stop(timeout=10)
    async with db() as session:
        rows = {
            row.id: row
            for row in (await session.execute(select(WebhookDelivery))).scalars()
            if row.id in sent
        }
        attempts = (await session.execute(select(WebhookAttempt))).scalars().all()
    assert {row.status for row in rows.values()} == {"delivered"}
    assert all(row.attempts == 1 for row in rows.values())
    assert sorted(a.delivery_id for a in attempts) == sorted(sent)


async def test_each_owner_signs_with_their_own_keys(db: async_sessionmaker[AsyncSession]) -> None:
    (alice_event,) = await add_deliveries(db, "alice", 1, "https://a.example.com/hook")
    (bob_event,) = await add_deliveries(db, "bob", 1, "https://b.example.com/hook")
    (ops_event,) = await add_deliveries(db, "alice", 1, OPERATOR_URL)
    async with db() as session, session.begin():
        secrets = SigningSecrets(session)
        alice_key = (await secrets.current("alice")).secret
        rotated = await secrets.rotate("bob", timedelta(hours=24))
        bob_keys = (rotated.secret, rotated.previous_secret)
    sender = HeldSender()
    sender.release.set()
    loop = notifier(db, sender)
    await loop.run_once()
    await loop.stop(timeout=10)
    by_event = {post["headers"]["X-Taskdeploy-Event-Id"]: post for post in sender.posts}

    def signed_with(event_id: str, *keys: str | None) -> bool:
        post = by_event[event_id]
        header = post["headers"]["X-Taskdeploy-Signature"]
        stamp = int(header.split(",")[0].removeprefix("t="))
        return header == signature_header([k for k in keys if k], stamp, post["body"])

    assert signed_with(alice_event, alice_key)
    assert signed_with(bob_event, *bob_keys)  # the new key and, in its grace, the old one
    assert signed_with(ops_event, "operator-secret")  # the operator's URL: the operator's key
    assert json.loads(by_event[alice_event]["body"])["id"] == alice_event


async def test_two_notifiers_never_take_the_same_event(pg_url: str) -> None:
    url = pg_url
    await asyncio.to_thread(migrate.upgrade, url)
    engines = [create_engine(url), create_engine(url)]
    try:
        makers = [create_sessionmaker(engine) for engine in engines]
        for owner in ("a", "b", "c", "d", "e", "f"):
            await add_deliveries(makers[0], owner, 8, f"https://{owner}.example.com/")
        senders = [HeldSender(), HeldSender()]
        loops = [
            notifier(maker, sender, max_in_flight=20, max_in_flight_per_owner=8)
            for maker, sender in zip(makers, senders, strict=True)
        ]
        await asyncio.gather(*(loop.run_once() for loop in loops))
        await asyncio.gather(*(loop.run_once() for loop in loops))
        deadline = asyncio.get_running_loop().time() + 10
        while sum(len(sender.posts) for sender in senders) < 40:  # 2 x max_in_flight
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert senders[0].posts and senders[1].posts
        ids = [
            [post["headers"]["X-Taskdeploy-Event-Id"] for post in sender.posts]
            for sender in senders
        ]
        assert not set(ids[0]) & set(ids[1])
        assert len(ids[0]) + len(ids[1]) == len(set(ids[0]) | set(ids[1])) == 40
        for sender in senders:
            sender.release.set()
        for loop in loops:
            await loop.stop(timeout=10)
    finally:
        for engine in engines:
            await engine.dispose()
