"""The run lifecycle on the in-memory backend: adoption, races, cancel, retries, outages,
lease loss. Each test takes milliseconds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from app.adapters.ports import AttemptRef, AttemptSpec
from app.db import utcnow
from app.models import RunState
from tests.unit.pipeline_harness import INSTANCE, World, seconds_since, until, world

S = RunState


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    made = await world(tmp_path)
    yield made
    for task in made.tasks:
        task.cancel()
    await asyncio.gather(*made.tasks, return_exceptions=True)
    await made.engine.dispose()


async def run_to_end(w: World, run_id: str, cancel: asyncio.Event | None = None) -> None:
    await asyncio.wait_for(w.execute(run_id, cancel), 10)


async def preseed(
    w: World, run_id: str, *, started: bool, runs: bool = False, code: int = 0
) -> AttemptRef:
    """An attempt a previous process launched (and maybe started) before it crashed."""
    w.backend.script(run_id, runs=runs, code=code)
    spec = AttemptSpec(
        run_id=run_id, attempt=1, instance_id="crashed", image="x", command="true", env={},
        nano_cpus=1, memory_bytes=1, pids_limit=1, tmp_bytes=1, nofile=1, file_size_bytes=1,
        disk_bytes=None, network=None,
    )  # fmt: skip
    ref = await w.backend.launch(spec, [])
    if started:
        await w.backend.start(ref)
    return ref


# ---------------------------------------------------------------------- verdicts end to end
async def test_a_run_succeeds_and_leaves_logs_metrics_manifest_and_outputs(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, stdout=b"hi\n", outputs={"a.txt": b"A"})
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert (run.state, run.exit_code, run.status_reason) == (S.SUCCEEDED, 0, None)
    stored = w.stored(run_id)
    assert stored["stdout.log"] == b"hi\n"
    assert stored["output/a.txt"] == b"A"
    manifest = json.loads(stored["run.json"])
    assert manifest["state"] == "succeeded" and manifest["instance_id"] == INSTANCE
    assert [a["key"].rsplit("/", 1)[-1] for a in run.artifacts][:2] == ["stdout.log", "stderr.log"]
    assert w.backend.attempts == {}  # forgotten once settled


@pytest.mark.parametrize(
    ("script", "state", "reason"),
    [
        ({"code": 3}, S.FAILED, "exit code 3"),
        ({"code": 0, "oom": True}, S.FAILED, "killed: out of memory"),
        ({"code": 1, "disk_full": True}, S.FAILED, "filled its disk limit of 64 MiB"),
    ],
)
async def test_the_verdict_comes_from_the_backend(
    w: World, script: dict[str, object], state: RunState, reason: str
) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, **script)
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == state
    assert reason in (run.status_reason or "")


async def test_a_stop_from_outside_the_service_is_an_error(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, runs=True)
    task = w.execute(run_id)
    await until(lambda: w.backend.running(run_id))
    w.backend.finish(run_id, 137, outside=True)
    await asyncio.wait_for(task, 10)
    run = await w.run(run_id)
    assert run.state == S.ERROR and "stopped from outside" in (run.status_reason or "")


async def test_output_caps_are_reported_in_the_reason_not_the_state(w: World) -> None:
    run_id = await w.add_run()
    outputs = {f"f{i}": b"x" for i in range(5)}  # the file cap is 3
    w.backend.script(run_id, outputs=outputs)
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == S.SUCCEEDED
    assert "output file cap reached" in (run.status_reason or "")
    assert sorted(k for k in w.stored(run_id) if k.startswith("output/")) == [
        "output/f0", "output/f1", "output/f2",
    ]  # fmt: skip


# ---------------------------------------------------------------------- time limit
async def test_the_time_limit_stops_the_attempt_and_still_harvests(w: World) -> None:
    run_id = await w.add_run(timeout_seconds=0)
    w.backend.script(run_id, runs=True, stdout=b"partial\n")
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == S.TIMED_OUT and run.status_reason == "killed at the time limit"
    assert w.stored(run_id)["stdout.log"] == b"partial\n"
    assert ("finishing", "timed_out") in await w.events(run_id)


async def test_an_exit_that_raced_the_time_limit_wins(w: World) -> None:
    run_id = await w.add_run(timeout_seconds=0)
    w.backend.script(run_id, code=0)  # exits the moment it starts: before the limit is looked at
    await run_to_end(w, run_id)
    assert (await w.run(run_id)).state == S.SUCCEEDED


async def test_an_adopted_attempt_keeps_its_time_limit_from_its_first_start(w: World) -> None:
    run_id = await w.add_run(S.RUNNING, timeout_seconds=30)
    await w.set(run_id, started_at=utcnow() - timedelta(seconds=31))
    await preseed(w, run_id, started=True, runs=True)
    await run_to_end(w, run_id)
    assert (await w.run(run_id)).state == S.TIMED_OUT


# ---------------------------------------------------------------------- cancel
async def test_cancel_before_the_command_starts_launches_nothing(w: World) -> None:
    run_id = await w.add_run()
    cancel = asyncio.Event()
    cancel.set()
    await run_to_end(w, run_id, cancel)
    run = await w.run(run_id)
    assert run.state == S.CANCELLED and run.status_reason == "cancelled before the command started"
    assert w.backend.launches == 0


async def test_cancel_during_a_slow_launch_removes_the_launched_attempt(w: World) -> None:
    run_id = await w.add_run()
    gate = asyncio.Event()
    w.backend.script(run_id, launch_delay=gate)
    task = w.execute(run_id)
    await until(lambda: w.backend.launches == 1)
    await w.set(run_id, cancel_requested=True)  # seen by the check between launch and start
    gate.set()
    await asyncio.wait_for(task, 10)
    assert (await w.run(run_id)).state == S.CANCELLED
    assert w.backend.launches == 1 and w.backend.attempts == {}


async def test_cancel_while_running_stops_the_attempt(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, runs=True)
    cancel = asyncio.Event()
    task = w.execute(run_id, cancel)
    await until(lambda: w.backend.running(run_id))
    cancel.set()
    await asyncio.wait_for(task, 10)
    run = await w.run(run_id)
    assert run.state == S.CANCELLED and run.status_reason == "cancelled while running"


async def test_cancel_recorded_by_another_replica_reaches_the_running_attempt(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, runs=True)
    task = w.execute(run_id)
    await until(lambda: w.backend.running(run_id))
    await w.set(run_id, cancel_requested=True)
    await asyncio.wait_for(task, 10)
    assert (await w.run(run_id)).state == S.CANCELLED


async def test_an_exit_that_raced_a_cancel_wins(w: World) -> None:
    run_id = await w.add_run()
    gate = asyncio.Event()
    w.backend.script(run_id, code=0, start_delay=gate)
    cancel = asyncio.Event()
    task = w.execute(run_id, cancel)
    await until(lambda: w.backend.starts == 1)
    cancel.set()  # after the last check before start: the command runs and exits
    gate.set()
    await asyncio.wait_for(task, 10)
    assert (await w.run(run_id)).state == S.SUCCEEDED


async def test_cancel_in_finishing_does_not_change_the_verdict(w: World) -> None:
    run_id = await w.add_run(S.FINISHING, finishing_detail="exited")
    await preseed(w, run_id, started=True, code=0)
    cancel = asyncio.Event()
    cancel.set()
    await run_to_end(w, run_id, cancel)
    assert (await w.run(run_id)).state == S.SUCCEEDED


# ---------------------------------------------------------------------- retries
RETRY = {"attempts": 3, "on": ["failed"], "backoff_seconds": 5, "backoff_factor": 2}


async def test_a_failed_attempt_is_retried_with_backoff_into_its_own_folder(w: World) -> None:
    run_id = await w.add_run(retry_policy=RETRY)
    w.backend.script(run_id, code=2, stdout=b"one\n")
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert (run.state, run.attempt, run.instance_id, run.container_id) == (S.QUEUED, 2, None, None)
    assert run.not_before is not None and 4 < -seconds_since(run.not_before) <= 5
    assert run.attempts[0]["prefix"].endswith(f"{run_id}/attempt-1/")

    await w.move(run_id, S.PREPARING, instance_id=INSTANCE)
    w.backend.script(run_id, code=2, stdout=b"two\n")
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.attempt == 3 and 9 < -seconds_since(run.not_before) <= 10  # 5 s, then 10 s

    await w.move(run_id, S.PREPARING, instance_id=INSTANCE)
    w.backend.script(run_id, code=0, stdout=b"three\n")
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == S.SUCCEEDED and len(run.attempts) == 3
    stored = w.stored(run_id)
    assert [stored[f"attempt-{n}/stdout.log"] for n in (1, 2, 3)] == [
        b"one\n",
        b"two\n",
        b"three\n",
    ]


async def test_the_last_attempt_ends_the_run(w: World) -> None:
    run_id = await w.add_run(retry_policy={**RETRY, "attempts": 1})
    w.backend.script(run_id, code=2)
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == S.FAILED and len(run.attempts) == 1


# ---------------------------------------------------------------------- engine outages
async def test_an_outage_while_waiting_is_waited_out(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, runs=True)
    task = w.execute(run_id)
    await until(lambda: w.backend.running(run_id))
    w.backend.down = True
    w.backend.finish(run_id, 0)
    await until(lambda: w.backend.refusals >= 3)
    w.backend.down = False
    await asyncio.wait_for(task, 10)
    assert (await w.run(run_id)).state == S.SUCCEEDED


async def test_an_outage_while_harvesting_is_retried(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, runs=True, stdout=b"kept\n")
    task = w.execute(run_id)
    await until(lambda: w.backend.running(run_id))
    w.backend.finish(run_id, 0)
    w.backend.down = True
    await until(lambda: w.backend.refusals >= 2)
    w.backend.down = False
    await asyncio.wait_for(task, 10)
    run = await w.run(run_id)
    assert run.state == S.SUCCEEDED and w.stored(run_id)["stdout.log"] == b"kept\n"


async def test_an_engine_down_at_launch_ends_the_run_in_error(w: World) -> None:
    run_id = await w.add_run()
    w.backend.down = True
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == S.ERROR and "RuntimeUnavailable" in (run.status_reason or "")


async def test_an_attempt_lost_while_running_ends_the_run_in_error(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, runs=True)
    task = w.execute(run_id)
    await until(lambda: w.backend.running(run_id))
    w.backend.lose(run_id)
    await asyncio.wait_for(task, 10)
    run = await w.run(run_id)
    assert run.state == S.ERROR and "instance lost" in (run.status_reason or "")


# ---------------------------------------------------------------------- adoption after restart
async def test_preparing_with_a_started_attempt_is_adopted_not_started_twice(w: World) -> None:
    run_id = await w.add_run()
    ref = await preseed(w, run_id, started=True, code=0)
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == S.SUCCEEDED and w.backend.launches == 1
    assert run.container_id == ref.handle
    assert any("adopted container" in (d or "") for _, d in await w.events(run_id))


async def test_preparing_with_a_launched_attempt_starts_over(w: World) -> None:
    run_id = await w.add_run()
    leftover = await preseed(w, run_id, started=False)
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == S.SUCCEEDED and w.backend.launches == 2
    assert leftover.handle in w.backend.forgotten and run.container_id != leftover.handle


async def test_running_is_adopted_and_waited_for(w: World) -> None:
    run_id = await w.add_run(S.RUNNING)
    await preseed(w, run_id, started=True, runs=True)
    task = w.execute(run_id)
    await until(lambda: w.orchestrator.phases.get(run_id) == "running")
    w.backend.finish(run_id, 4)
    await asyncio.wait_for(task, 10)
    run = await w.run(run_id)
    assert run.state == S.FAILED and run.exit_code == 4 and w.backend.launches == 1


async def test_running_whose_attempt_is_gone_ends_in_error(w: World) -> None:
    run_id = await w.add_run(S.RUNNING)
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == S.ERROR and "instance lost" in (run.status_reason or "")


@pytest.mark.parametrize(
    ("recorded", "state"),
    [("exited", S.FAILED), ("timed_out", S.TIMED_OUT), ("cancelled", S.CANCELLED)],
)
async def test_finishing_is_harvested_again_with_the_recorded_outcome(
    w: World, recorded: str, state: RunState
) -> None:
    run_id = await w.add_run(S.FINISHING, finishing_detail=recorded)
    await preseed(w, run_id, started=True, code=9)
    await run_to_end(w, run_id)
    run = await w.run(run_id)
    assert run.state == state and run.exit_code == 9
    assert "run.json" in w.stored(run_id)


async def test_shutdown_keeps_the_attempt_for_the_next_process(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, runs=True)
    task = w.execute(run_id)
    await until(lambda: w.orchestrator.phases.get(run_id) == "running")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await w.run(run_id)).state == S.RUNNING
    assert w.backend.running(run_id)


# ---------------------------------------------------------------------- lease loss
async def test_a_lost_lease_stops_the_writes_and_leaves_the_attempt_to_its_owner(w: World) -> None:
    run_id = await w.add_run()
    w.backend.script(run_id, runs=True)
    task = w.execute(run_id)
    await until(lambda: w.backend.running(run_id))
    await w.set(run_id, instance_id="unit-2")  # another replica took the expired lease over
    w.backend.finish(run_id, 0)
    await asyncio.wait_for(task, 10)
    run = await w.run(run_id)
    assert run.state == S.RUNNING and run.instance_id == "unit-2"  # nothing written over it
    assert w.backend.attempts  # not forgotten: the new owner adopts it


@pytest.mark.parametrize("down", [False, True])
async def test_the_image_is_pinned_until_the_attempt_exists_then_released(
    w: World, down: bool
) -> None:
    run_id = await w.add_run()
    gate = asyncio.Event()
    w.backend.script(run_id, launch_delay=gate)
    task = w.execute(run_id)
    await until(lambda: w.backend.launches == 1)
    await w.set(run_id, state=S.SUCCEEDED.value)  # the run's key alone no longer protects it
    assert await w.environments.evict(max_count=0, max_bytes=0) == []  # chosen: pinned
    w.backend.down = down  # the start fails when down: the pin goes all the same
    gate.set()
    await asyncio.wait_for(task, 10)
    assert len(await w.environments.evict(max_count=0, max_bytes=0)) == 1
