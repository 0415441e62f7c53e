"""GET /v1/runs/{id}/wait on a migrated SQLite database: answers at once for a terminal run, wakes
on a terminal transition the moment it commits in this process (or at the poll for one made
elsewhere), answers the current state at its timeout, and keeps its waiter limits without leaks.
No sleeps: conditions with deadlines."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.db import create_sessionmaker
from app.main import create_app
from app.models import RunState
from app.services.auth import AccessPolicy, create_key
from app.services.runs import transition
from app.services.waiters import RUN_WAITERS_INFO, RunWaiters
from tests.factories import make_limits
from tests.unit.pipeline_harness import World, until, world

S = RunState


@dataclass
class Api:
    app: FastAPI
    world: World
    waiters: RunWaiters
    tokens: dict[str, str]

    def client(self, owner: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://127.0.0.1",
            headers={"Authorization": f"Bearer {self.tokens[owner]}"},
        )

    async def add_run(self, owner: str, state: RunState = S.RUNNING) -> str:
        """A run of `owner` in `state` (a terminal one through `finishing`)."""
        if not state.terminal:
            return await self.world.add_run(state, owner=owner)
        run_id = await self.world.add_run(S.FINISHING, owner=owner)
        await self.world.move(run_id, state)
        return run_id


async def make_api(tmp_path: Path, **limits: Any) -> Api:
    w = await world(tmp_path)
    settings: dict[str, Any] = {"max_per_owner": 5, "max_total": 10, "poll_seconds": 3600.0}
    settings.update(limits)
    waiters = RunWaiters(w.sessionmaker, **settings)
    w.sessionmaker.configure(info={RUN_WAITERS_INFO: waiters})
    tokens = {}
    async with w.sessionmaker() as session, session.begin():
        for owner in ("alice", "bob"):
            tokens[owner] = (await create_key(session, owner, admin=False))[1]
    app = create_app(Settings(data_dir=tmp_path / "data"))
    # What the endpoint reads of the process's context (the lifespan, which would open the
    # Docker engine, is not run here).
    app.state.context = SimpleNamespace(
        sessionmaker=w.sessionmaker,
        access=AccessPolicy("auto", "127.0.0.1"),
        run_limits=make_limits(),
        waiters=waiters,
    )
    return Api(app, w, waiters, tokens)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    made = await make_api(tmp_path)
    yield made
    await made.waiters.close()
    await made.world.engine.dispose()


def wait_url(run_id: str, timeout: object = 60) -> str:
    return f"/v1/runs/{run_id}/wait?timeout={timeout}"


async def waiting(api: Api, run_id: str, client: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
    """A wait request in flight, once the service counts it as a waiter of `run_id`."""
    before = api.waiters.waiting_for(run_id)
    task = asyncio.create_task(client.get(wait_url(run_id)))
    await until(lambda: api.waiters.waiting_for(run_id) > before or task.done())
    assert not task.done(), task.result().text
    return task


async def test_a_terminal_run_is_answered_at_once_without_taking_a_waiter_slot(
    tmp_path: Path,
) -> None:
    api = await make_api(tmp_path, max_per_owner=1)
    async with api.client("alice") as alice:
        holder = await waiting(api, await api.add_run("alice"), alice)  # the owner's only slot
        done = await api.add_run("alice", S.FAILED)
        response = await alice.get(wait_url(done))
        assert response.status_code == 200, response.text
        assert response.headers["Taskdeploy-Wait"] == "ended"
        assert response.json()["state"] == "failed"
        assert response.json() == (await alice.get(f"/v1/runs/{done}")).json()
        holder.cancel()
    await until(lambda: api.waiters.waiting == 0)
    await api.waiters.close()


async def test_a_terminal_transition_committed_here_wakes_the_waiter_without_the_poll(
    api: Api,
) -> None:
    run_id = await api.add_run("alice", S.RUNNING)
    async with api.client("alice") as alice:
        task = await waiting(api, run_id, alice)  # the poll is an hour away
        await api.world.move(run_id, S.FINISHING)  # not terminal: nobody is woken
        async with api.world.sessionmaker() as session:
            await transition(session, run_id, S.SUCCEEDED)
            await session.rollback()  # a transition that did not happen is not announced
        assert api.waiters.announced == 0 and not task.done()
        await api.world.move(run_id, S.SUCCEEDED)
        assert api.waiters.announced == 1
        response = await asyncio.wait_for(task, 10)
    assert response.status_code == 200, response.text
    assert response.headers["Taskdeploy-Wait"] == "ended"
    assert response.json()["state"] == "succeeded"
    assert api.waiters.waiting == 0


async def test_a_run_ended_by_another_replica_is_seen_at_the_poll(tmp_path: Path) -> None:
    api = await make_api(tmp_path, poll_seconds=0.05)
    other_replica = create_sessionmaker(api.world.engine)  # its sessions announce nothing here
    run_id = await api.add_run("alice", S.FINISHING)
    async with api.client("alice") as alice:
        task = await waiting(api, run_id, alice)
        async with other_replica() as session, session.begin():
            await transition(session, run_id, S.ERROR, detail="ended elsewhere")
        response = await asyncio.wait_for(task, 10)
    assert response.headers["Taskdeploy-Wait"] == "ended"
    assert response.json()["state"] == "error"
    await api.waiters.close()
    await api.world.engine.dispose()


async def test_at_the_timeout_the_run_comes_back_as_it_is(api: Api) -> None:
    run_id = await api.add_run("alice", S.RUNNING)
    async with api.client("alice") as alice:
        response = await alice.get(wait_url(run_id, 0.2))
    assert response.status_code == 200, response.text
    assert response.headers["Taskdeploy-Wait"] == "timeout"
    assert response.json()["state"] == "running"
    assert api.waiters.waiting == 0


async def test_the_operators_cap_cuts_a_longer_timeout(tmp_path: Path) -> None:
    api = await make_api(tmp_path, max_seconds=0.1)
    run_id = await api.add_run("alice", S.RUNNING)
    async with api.client("alice") as alice:
        response = await asyncio.wait_for(alice.get(wait_url(run_id, 60)), 30)
    assert response.headers["Taskdeploy-Wait"] == "timeout"
    assert response.json()["state"] == "running"
    await api.waiters.close()
    await api.world.engine.dispose()


async def test_another_owners_run_is_not_found(api: Api) -> None:
    run_id = await api.add_run("alice", S.RUNNING)
    async with api.client("bob") as bob:
        response = await bob.get(wait_url(run_id, 0.2))
        missing = await bob.get(wait_url("no-such-run", 0.2))
    assert (response.status_code, missing.status_code) == (404, 404)
    assert response.json()["error"]["message"] == f"run {run_id} not found"  # as if missing
    assert api.waiters.waiting == 0


@pytest.mark.parametrize("timeout", ["0", "-1", "60.5", "61", "nan", "soon", ""])
async def test_a_bad_timeout_is_refused_naming_the_field(api: Api, timeout: str) -> None:
    run_id = await api.add_run("alice", S.RUNNING)
    async with api.client("alice") as alice:
        response = await alice.get(wait_url(run_id, timeout))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "timeout"


async def test_waiters_past_the_limits_get_429_and_every_slot_comes_back(tmp_path: Path) -> None:
    api = await make_api(tmp_path, max_per_owner=2, max_total=3)
    async with api.client("alice") as alice, api.client("bob") as bob:
        alice_run, bob_run = await api.add_run("alice"), await api.add_run("bob")
        held = [await waiting(api, alice_run, alice), await waiting(api, alice_run, alice)]
        refused = await alice.get(wait_url(alice_run))
        assert refused.status_code == 429
        assert "TASKDEPLOY_MAX_WAITERS_PER_OWNER" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) > 0
        held.append(await waiting(api, bob_run, bob))  # bob is not held back by alice
        refused = await bob.get(wait_url(bob_run))
        assert refused.status_code == 429
        assert "TASKDEPLOY_MAX_WAITERS)" in refused.json()["error"]["message"]
        assert api.waiters.waiting == 3
        for task in held:
            task.cancel()  # the client gives up: the request's task is cancelled
        await until(lambda: api.waiters.waiting == 0)
        assert api.waiters.waiting_for(alice_run) == 0
        again = await alice.get(wait_url(alice_run, 0.1))
        assert again.headers["Taskdeploy-Wait"] == "timeout"
    await api.waiters.close()
    await api.world.engine.dispose()


async def test_a_client_that_disconnects_from_a_real_server_gives_its_slot_back(api: Api) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        run_id = await api.add_run("alice", S.RUNNING)
        await until(lambda: server.started)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {wait_url(run_id)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {api.tokens['alice']}\r\n\r\n".encode()
        )
        await writer.drain()
        await until(lambda: api.waiters.waiting_for(run_id) == 1)
        writer.close()  # well before the 60 s timeout
        await until(lambda: api.waiters.waiting == 0)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        listener.close()
